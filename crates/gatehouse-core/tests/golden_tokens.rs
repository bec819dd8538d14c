//! Token counts equal Python tiktoken's on a committed corpus (see `tests/tokens/gen_golden.py`).

use std::path::Path;

use gatehouse_core::Encoding;
use serde_json::Value;

#[test]
fn counts_match_python_tiktoken() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tokens");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (enc_name, files) in golden["encodings"].as_object().unwrap() {
        let enc: Encoding = enc_name.parse().unwrap();
        for (file, want) in files.as_object().unwrap() {
            let text = std::fs::read_to_string(dir.join("corpus").join(file)).unwrap();
            assert_eq!(
                enc.count(&text),
                want["whole"].as_u64().unwrap(),
                "{enc_name} {file} (whole file)"
            );
            let lines: Vec<&str> = text.split('\n').collect();
            let want_lines = want["lines"].as_array().unwrap();
            assert_eq!(
                lines.len(),
                want_lines.len(),
                "{file}: corpus and golden disagree"
            );
            for (i, (line, n)) in lines.iter().zip(want_lines).enumerate() {
                assert_eq!(
                    enc.count(line),
                    n.as_u64().unwrap(),
                    "{enc_name} {file} line {}",
                    i + 1
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} cases: is the corpus there?");
}
