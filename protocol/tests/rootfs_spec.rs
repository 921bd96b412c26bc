//! The optional rootfs of a boot spec: old specs (without it) still decode.

use podvm_protocol::{BootSpec, RootfsSpec};

#[test]
fn specs_without_rootfs_decode_to_none() {
    let spec: BootSpec =
        serde_json::from_str(r#"{"command":["true"],"env":[],"workdir":null}"#).expect("old spec");
    assert_eq!(spec.rootfs, None);
}

#[test]
fn rootfs_roundtrips_with_defaults_for_missing_fields() {
    let spec: BootSpec = serde_json::from_str(
        r#"{"command":["sh"],"env":[],"workdir":"/","rootfs":{"tag":"rootfs0"}}"#,
    )
    .expect("minimal rootfs");
    let rootfs = spec.rootfs.clone().expect("present");
    assert_eq!(
        rootfs,
        RootfsSpec {
            tag: "rootfs0".into(),
            ..RootfsSpec::default()
        }
    );
    let again: BootSpec =
        serde_json::from_str(&serde_json::to_string(&spec).expect("encode")).expect("decode");
    assert_eq!(again, spec);
}
