//! App resource limits (`--memory`, `--cpu`) as appc isolators, and the VM size they add up to.
//!
//! Quantities follow appc/Kubernetes: memory `512M` (10^6), `512Mi` (2^20), `1G`, `1Gi`, or
//! bytes; CPU `500m` (millicores), `1`, `2.5`.

use podvm_protocol::AppLimits;
use serde::{Deserialize, Serialize};

/// appc isolator name of a memory limit.
pub const MEMORY_ISOLATOR: &str = "resource/memory";
/// appc isolator name of a CPU limit.
pub const CPU_ISOLATOR: &str = "resource/cpu";
/// appc isolator of the app's OOM score adjustment (a number, -1000 to 1000).
pub const OOM_SCORE_ADJ_ISOLATOR: &str = "os/linux/oom-score-adj";
/// appc isolator of the app's CPU shares (a number, 2 to 262144; cgroup v1's `cpu.shares`).
pub const CPU_SHARES_ISOLATOR: &str = "os/linux/cpu-shares";
/// Guest memory for the kernel and the agent on top of the apps' limits, in MiB.
pub const GUEST_OVERHEAD_MIB: u64 = 128;
/// Smallest VM podvm boots for a pod, in MiB.
pub const MIN_VM_MIB: u64 = 256;

/// A bad quantity.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Not a quantity of that kind.
    #[error("{flag} {value:?}: {expected}")]
    Bad {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// An appc isolator: a named limit or set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolator {
    /// `resource/memory`, `resource/cpu`, or one of the `os/linux/...-set` isolators of
    /// [`super::security`].
    pub name: String,
    /// Its value.
    pub value: Limit,
}

/// The value of an isolator: `limit` for a resource, `set` (and `errno`) for the capability and
/// seccomp sets, a bare number for `os/linux/oom-score-adj` and `os/linux/cpu-shares`; the
/// fields of the other kinds stay empty and are not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LimitJson", into = "LimitJson")]
pub struct Limit {
    /// The value of an isolator whose value is a number (then the only one written).
    pub number: Option<i64>,
    /// The fields of an isolator whose value is an object.
    pub fields: LimitFields,
}

/// How [`Limit`] is written: a number or an object.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LimitJson {
    Number(i64),
    Fields(LimitFields),
}

impl From<LimitJson> for Limit {
    fn from(json: LimitJson) -> Self {
        match json {
            LimitJson::Number(number) => Limit {
                number: Some(number),
                fields: LimitFields::default(),
            },
            LimitJson::Fields(fields) => Limit {
                number: None,
                fields,
            },
        }
    }
}

impl From<Limit> for LimitJson {
    fn from(limit: Limit) -> Self {
        match limit.number {
            Some(number) => LimitJson::Number(number),
            None => LimitJson::Fields(limit.fields),
        }
    }
}

impl std::ops::Deref for Limit {
    type Target = LimitFields;
    fn deref(&self) -> &LimitFields {
        &self.fields
    }
}

/// The object value of an isolator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitFields {
    /// The limit as given (a quantity string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub limit: String,
    /// Capability or system call names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// The errno name a seccomp set's refused calls fail with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
}

impl Isolator {
    /// A memory isolator, after checking the quantity.
    pub fn memory(value: &str) -> Result<Self, ResourceError> {
        memory_bytes(value)?;
        Ok(Self::new(MEMORY_ISOLATOR, value))
    }

    /// A CPU isolator, after checking the quantity.
    pub fn cpu(value: &str) -> Result<Self, ResourceError> {
        cpu_millis(value)?;
        Ok(Self::new(CPU_ISOLATOR, value))
    }

    /// An OOM score adjustment isolator, after checking the range.
    pub fn oom_score_adj(value: i64) -> Result<Self, ResourceError> {
        let expected = "expected a number from -1000 to 1000";
        Self::number(
            OOM_SCORE_ADJ_ISOLATOR,
            "--oom-score-adj",
            value,
            -1000..=1000,
            expected,
        )
    }

    /// A CPU shares isolator, after checking the range.
    pub fn cpu_shares(value: i64) -> Result<Self, ResourceError> {
        let expected = "expected a number from 2 to 262144";
        Self::number(
            CPU_SHARES_ISOLATOR,
            "--cpu-shares",
            value,
            2..=262_144,
            expected,
        )
    }

    fn number(
        name: &str,
        flag: &'static str,
        value: i64,
        range: std::ops::RangeInclusive<i64>,
        expected: &'static str,
    ) -> Result<Self, ResourceError> {
        if !range.contains(&value) {
            return Err(ResourceError::Bad {
                flag,
                value: value.to_string(),
                expected,
            });
        }
        Ok(Self {
            name: name.to_string(),
            value: Limit {
                number: Some(value),
                fields: LimitFields::default(),
            },
        })
    }

    fn new(name: &str, limit: &str) -> Self {
        Self {
            name: name.to_string(),
            value: Limit {
                number: None,
                fields: LimitFields {
                    limit: limit.to_string(),
                    ..LimitFields::default()
                },
            },
        }
    }
}

/// Bytes of a memory quantity.
pub fn memory_bytes(value: &str) -> Result<u64, ResourceError> {
    let bad = || ResourceError::Bad {
        flag: "--memory",
        value: value.to_string(),
        expected: "expected a size such as 512M, 512Mi, 1G or 1Gi",
    };
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| value.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((value, 1));
    let number: u64 = number.parse().map_err(|_| bad())?;
    match number.checked_mul(unit) {
        Some(0) | None => Err(bad()),
        Some(bytes) => Ok(bytes),
    }
}

/// Millicores of a CPU quantity.
pub fn cpu_millis(value: &str) -> Result<u64, ResourceError> {
    let bad = || ResourceError::Bad {
        flag: "--cpu",
        value: value.to_string(),
        expected: "expected CPUs such as 500m, 1 or 2.5",
    };
    let millis = match value.strip_suffix('m') {
        Some(number) => number.parse::<u64>().map_err(|_| bad())?,
        None => {
            let cores: f64 = value.parse().map_err(|_| bad())?;
            if !cores.is_finite() || !(0.0..=1024.0).contains(&cores) {
                return Err(bad());
            }
            (cores * 1000.0).round() as u64
        }
    };
    if millis == 0 {
        return Err(bad());
    }
    Ok(millis)
}

/// VM memory (MiB) and vCPUs for apps with these isolators: the sum of the memory limits plus
/// the guest's overhead (at least [`MIN_VM_MIB`]; `default_mib` when no app has a limit), and
/// the sum of the CPU limits rounded up (at least 1).
pub fn vm_size<'a>(
    isolators: impl IntoIterator<Item = &'a Isolator>,
    default_mib: u64,
) -> (u64, u8) {
    let mut memory = None::<u64>;
    let mut millis = 0u64;
    for isolator in isolators {
        match isolator.name.as_str() {
            MEMORY_ISOLATOR => {
                let bytes = memory_bytes(&isolator.value.limit).unwrap_or(0);
                *memory.get_or_insert(0) += bytes.div_ceil(1 << 20);
            }
            CPU_ISOLATOR => millis += cpu_millis(&isolator.value.limit).unwrap_or(0),
            _ => {}
        }
    }
    let mib = memory.map_or(default_mib, |apps| {
        (apps + GUEST_OVERHEAD_MIB).max(MIN_VM_MIB)
    });
    let cpus = u8::try_from(millis.div_ceil(1000).max(1)).unwrap_or(u8::MAX);
    (mib, cpus)
}

/// One app's limits for its cgroup in the guest, from its isolators.
pub fn app_limits<'a>(isolators: impl IntoIterator<Item = &'a Isolator>) -> AppLimits {
    let mut limits = AppLimits::default();
    for isolator in isolators {
        match isolator.name.as_str() {
            MEMORY_ISOLATOR => limits.memory_bytes = memory_bytes(&isolator.value.limit).ok(),
            CPU_ISOLATOR => limits.cpu_millis = cpu_millis(&isolator.value.limit).ok(),
            CPU_SHARES_ISOLATOR => {
                limits.cpu_shares = isolator.value.number.and_then(|n| u64::try_from(n).ok());
            }
            OOM_SCORE_ADJ_ISOLATOR => {
                limits.oom_score_adj = isolator.value.number.and_then(|n| i32::try_from(n).ok());
            }
            _ => {}
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_limits_come_from_the_apps_isolators() {
        let isolators = [
            Isolator::memory("64Mi").expect("valid"),
            Isolator::cpu("500m").expect("valid"),
        ];
        let limits = app_limits(&isolators);
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(limits.cpu_millis, Some(500));
        let numbers = [
            Isolator::oom_score_adj(-500).expect("valid"),
            Isolator::cpu_shares(512).expect("valid"),
        ];
        let json = serde_json::to_string(&numbers).expect("json");
        assert_eq!(
            json,
            r#"[{"name":"os/linux/oom-score-adj","value":-500},{"name":"os/linux/cpu-shares","value":512}]"#
        );
        let back: Vec<Isolator> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, numbers);
        let limits = app_limits(&back);
        assert_eq!(limits.oom_score_adj, Some(-500));
        assert_eq!(limits.cpu_shares, Some(512));
        assert!(Isolator::oom_score_adj(1001).is_err());
        assert!(Isolator::cpu_shares(1).is_err());
        assert!(app_limits(&[]).is_empty());
    }

    #[test]
    fn quantities_parse_as_appc_and_kubernetes_write_them() {
        assert_eq!(memory_bytes("512Mi").expect("ok"), 512 << 20);
        assert_eq!(memory_bytes("1G").expect("ok"), 1_000_000_000);
        assert_eq!(memory_bytes("4096").expect("ok"), 4096);
        for bad in ["", "0", "12X", "-1M", "1.5G", "M"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(cpu_millis("500m").expect("ok"), 500);
        assert_eq!(cpu_millis("2.5").expect("ok"), 2500);
        for bad in ["", "0", "0m", "x", "-1", "nan", "1e9"] {
            assert!(cpu_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_vm_is_the_sum_of_the_apps_plus_overhead() {
        let limits = [
            Isolator::memory("300Mi").expect("ok"),
            Isolator::memory("200M").expect("ok"),
            Isolator::cpu("1500m").expect("ok"),
            Isolator::cpu("1").expect("ok"),
        ];
        // 300 MiB + 191 MiB (200 MB rounded up) + 128 MiB overhead; 2.5 CPUs -> 3 vCPUs.
        assert_eq!(vm_size(&limits, 256), (300 + 191 + 128, 3));
        assert_eq!(
            vm_size(&limits[..0], 256),
            (256, 1),
            "defaults without limits"
        );
        let small = [Isolator::memory("16Mi").expect("ok")];
        assert_eq!(vm_size(&small, 999), (MIN_VM_MIB, 1), "floor");
    }
}
