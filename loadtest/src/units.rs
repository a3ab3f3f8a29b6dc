//! How durations and scheduler names appear in the JSON report: seconds as a float, and the
//! names operators type — readable, and read back by `tpvs-loadtest report`.

/// `Duration` as fractional seconds.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// `Vec<SchedulerKind>` as a list of names.
pub mod kinds {
    use schedulers::SchedulerKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[SchedulerKind], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(k.iter().map(|k| k.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SchedulerKind>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names.iter().map(|n| n.parse().map_err(serde::de::Error::custom)).collect()
    }
}
