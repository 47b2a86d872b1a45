//! `note::parse_yaml` against the full YAML parser (`serde_yaml`): the fast
//! path of src/simple_yaml.rs must read exactly what `serde_yaml` reads,
//! and refuse exactly what it refuses (the differential test of
//! src/simple_yaml.rs, on any input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_yaml::{Mapping, Value};
use vaultrunner::note::{self, FrontMatterError};
use vaultrunner_fuzz::same_mapping;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let ours = note::parse_yaml(yaml);
    if yaml.trim().is_empty() {
        assert_eq!(ours, Ok(Mapping::new()));
        return;
    }
    match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => match &ours {
            Ok(o) => assert!(same_mapping(o, &m), "{yaml:?}\nours {o:?}\nfull {m:?}"),
            Err(e) => panic!("{yaml:?}: ours refused ({e}), full read {m:?}"),
        },
        Ok(Value::Null) => assert_eq!(ours, Ok(Mapping::new()), "{yaml:?}"),
        Ok(other) => assert_eq!(
            ours,
            Err(FrontMatterError::NotMapping),
            "{yaml:?}: {other:?}"
        ),
        Err(e) => assert!(
            matches!(ours, Err(FrontMatterError::Yaml(_))),
            "{yaml:?}: full refused ({e}), ours read {ours:?}"
        ),
    }
});
