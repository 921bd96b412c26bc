//! The appc pod manifest (`acKind: PodManifest`), written into every pod before its VM starts.
//! Field names follow the appc spec, so rkt tooling can read `podvm cat-manifest`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resources::Isolator;
use super::volumes::{Mount, Volume};

/// appc spec version written into manifests.
pub const AC_VERSION: &str = "0.8.11";

/// A `name`/`value` pair (environment entries, annotations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// The image an app runs, by id (and the name it was asked for by).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The name given on the command line.
    pub name: String,
    /// The store's image id.
    pub id: String,
}

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// Program and arguments.
    pub exec: Vec<String>,
    /// User (name or uid).
    pub user: String,
    /// Group (name or gid); empty: the user's primary group.
    pub group: String,
    /// Working directory.
    pub working_directory: String,
    /// Environment, in precedence order already applied.
    pub environment: Vec<NameValue>,
    /// Resource limits (`--memory`, `--cpu`), capabilities and seccomp sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    /// Groups the app's process is in besides its user's (`--supplementary-gids`).
    #[serde(
        rename = "supplementaryGIDs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub supplementary_gids: Vec<u32>,
    /// The app's annotations (`--user-annotation`), for people and tools; podvm reads none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_annotations: BTreeMap<String, String>,
    /// The app's labels (`--user-label`), for people and tools; podvm reads none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_labels: BTreeMap<String, String>,
}

impl App {
    /// The environment as `KEY=VALUE` entries, as the guest agent takes it.
    pub fn env_entries(&self) -> Vec<String> {
        self.environment
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect()
    }
}

/// One app of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeApp {
    /// Unique name within the pod (an appc ACName).
    pub name: String,
    /// Its image.
    pub image: ImageRef,
    /// How to run it.
    pub app: App,
    /// Whether its root filesystem is read-only.
    #[serde(rename = "readOnlyRootFS")]
    pub read_only_root_fs: bool,
    /// Volumes mounted into the app (`--mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// The pod manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodManifest {
    /// Always `PodManifest`.
    pub ac_kind: String,
    /// The appc version.
    pub ac_version: String,
    /// The apps, in command-line order.
    pub apps: Vec<RuntimeApp>,
    /// Annotations (`--annotation`, plus podvm's own such as the hostname).
    pub annotations: Vec<NameValue>,
    /// The pod's volumes (`--volume`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The pod's annotations for people and tools (pod-level `--user-annotation`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_annotations: BTreeMap<String, String>,
    /// The pod's labels for people and tools (pod-level `--user-label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_labels: BTreeMap<String, String>,
}

impl PodManifest {
    /// The value of the annotation `name`, if the pod has it.
    pub fn annotation(&self, name: &str) -> Option<String> {
        self.annotations
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.clone())
    }

    /// A manifest for these apps and annotations.
    pub fn new(apps: Vec<RuntimeApp>, annotations: Vec<NameValue>) -> Self {
        Self {
            ac_kind: "PodManifest".into(),
            ac_version: AC_VERSION.into(),
            apps,
            annotations,
            volumes: Vec::new(),
            user_annotations: BTreeMap::new(),
            user_labels: BTreeMap::new(),
        }
    }
}

/// An appc ACName for an app from its image name: the last path component without tag or
/// digest, lower case, every run of other characters one `-` (e.g. `docker://x/library/busybox:1` →
/// `busybox`).
pub fn app_name_from_image(image: &str) -> String {
    let transports = ["docker://", "oci-archive:", "docker-archive:", "oci:"];
    let reference = transports
        .iter()
        .find_map(|prefix| image.strip_prefix(prefix))
        .unwrap_or(image);
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(without_digest);
    let base = last.split(':').next().unwrap_or(last);
    let base = base
        .strip_suffix(".tar")
        .or_else(|| base.strip_suffix(".aci"))
        .unwrap_or(base);
    crate::image::acname::sanitize(base, "app")
}

/// Makes `name` unique among `taken` by appending `-2`, `-3`, ...
pub fn unique_name(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|n| format!("{name}-{n}"))
        .find(|candidate| !taken.contains(candidate))
        .expect("an unbounded range always yields a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_from_image_references() {
        assert_eq!(
            app_name_from_image("docker://127.0.0.1:5000/library/busybox:1.36"),
            "busybox"
        );
        assert_eq!(app_name_from_image("docker://nginx@sha256:abcd"), "nginx");
        assert_eq!(app_name_from_image("oci:/tmp/layout:demo"), "layout");
        assert_eq!(
            app_name_from_image("oci:busybox-layout:latest"),
            "busybox-layout"
        );
        assert_eq!(
            app_name_from_image("docker-archive:/x/alpine.tar"),
            "alpine"
        );
        assert_eq!(app_name_from_image("My_App"), "my-app");
        assert_eq!(app_name_from_image(":::"), "app");
    }

    #[test]
    fn names_are_made_unique() {
        let taken = vec!["web".to_string(), "web-2".to_string()];
        assert_eq!(unique_name("web".into(), &taken), "web-3");
        assert_eq!(unique_name("db".into(), &taken), "db");
    }

    #[test]
    fn manifest_uses_appc_field_names() {
        let app = RuntimeApp {
            name: "a".into(),
            image: ImageRef {
                name: "i".into(),
                id: "sha256:1".into(),
            },
            app: App {
                exec: vec!["/bin/sh".into()],
                user: "0".into(),
                group: "0".into(),
                working_directory: "/".into(),
                environment: vec![],
                isolators: vec![Isolator::memory("64Mi").expect("valid")],
                supplementary_gids: vec![10, 27],
                user_annotations: BTreeMap::from([("team".into(), "web".into())]),
                user_labels: BTreeMap::from([("tier".into(), "front".into())]),
            },
            read_only_root_fs: true,
            mounts: vec![Mount {
                volume: "data".into(),
                path: "/data".into(),
            }],
        };
        let mut manifest = PodManifest::new(vec![app], vec![]);
        manifest.volumes =
            vec![
                crate::pod::volumes::parse_volume("data,kind=host,source=/srv,readOnly=true")
                    .expect("valid"),
            ];
        let json = serde_json::to_string(&manifest).expect("json");
        for field in [
            "\"acKind\":\"PodManifest\"",
            "\"acVersion\"",
            "\"workingDirectory\"",
            "\"isolators\":[{\"name\":\"resource/memory\",\"value\":{\"limit\":\"64Mi\"}}]",
            "\"readOnlyRootFS\":true",
            "\"supplementaryGIDs\":[10,27]",
            "\"userAnnotations\":{\"team\":\"web\"}",
            "\"userLabels\":{\"tier\":\"front\"}",
            "\"mounts\":[{\"volume\":\"data\",\"path\":\"/data\"}]",
            "\"volumes\":[{\"name\":\"data\",\"kind\":\"host\",\"source\":\"/srv\",\"readOnly\":true}]",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
    }
}
