//! The CLIP tokenizer against OpenCLIP: the shared golden file, a wider set of cases generated
//! with OpenCLIP's own `SimpleTokenizer` (tests/fixtures/tokenizer_oracle.jsonl), and the
//! reduced-vocabulary mapping.

use clusterclip::data::text_clean::{clean_caption, html_unescape};
use clusterclip::data::tokenizer::{END_OF_TEXT, START_OF_TEXT, Tokenizer, reduce_token_id};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/clip_tokenizer_golden.jsonl"
);
const ORACLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer_oracle.jsonl"
);

struct Case {
    text: String,
    context_length: usize,
    ids: Vec<u32>,
}

fn read_cases(path: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}: {e}: {line}"));
            let ids = value
                .get("ids")?
                .as_array()?
                .iter()
                .map(|id| id.as_u64().unwrap() as u32)
                .collect();
            Some(Case {
                text: value["text"].as_str().unwrap().to_string(),
                context_length: value["context_length"].as_u64().unwrap() as usize,
                ids,
            })
        })
        .collect()
}

/// Checks every case and reports all mismatches at once.
fn check_cases(path: &str, min_cases: usize) {
    let tokenizer = Tokenizer::shared();
    let cases = read_cases(path);
    assert!(
        cases.len() >= min_cases,
        "{path}: only {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let padded = tokenizer.encode(&case.text, case.context_length, 49_408);
        assert_eq!(padded.len(), case.context_length);
        let got: Vec<u32> = padded[..case.ids.len()].to_vec();
        let padding_is_zero = padded[case.ids.len()..].iter().all(|&id| id == 0);
        if got != case.ids || !padding_is_zero {
            failures.push(format!(
                "{:?}: want {:?} got {:?} (clean {:?})",
                case.text,
                case.ids,
                padded,
                clean_caption(&case.text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn shared_golden_file_matches_openclip() {
    check_cases(GOLDEN, 20);
}

#[test]
fn generated_oracle_cases_match_openclip() {
    check_cases(ORACLE, 250);
}

#[test]
fn truncation_keeps_end_token_and_padding_is_zero() {
    let tokenizer = Tokenizer::shared();
    let long = "a photo of a cat ".repeat(20);
    let ids = tokenizer.encode(&long, 16, 49_408);
    assert_eq!(ids.len(), 16);
    assert_eq!(ids[0], START_OF_TEXT);
    assert_eq!(ids[15], END_OF_TEXT);
    assert_eq!(&ids[1..6], &[320, 1125, 539, 320, 2368]);
    let short = tokenizer.encode("a", 8, 49_408);
    assert_eq!(short, vec![START_OF_TEXT, 320, END_OF_TEXT, 0, 0, 0, 0, 0]);
    assert_eq!(tokenizer.encode("a b c", 1, 49_408), vec![END_OF_TEXT]);
    assert!(tokenizer.encode("a", 0, 49_408).is_empty());
}

#[test]
fn reduced_vocabulary_keeps_bytes_and_end_token_highest() {
    let tokenizer = Tokenizer::shared();
    for vocab in [1000usize, 515, 514, 100, 3] {
        let ids = tokenizer.encode("a photo of a naïve café résumé 東京 😀!!", 32, vocab);
        let end = ids
            .iter()
            .position(|&id| id == vocab as u32 - 1)
            .expect("end token present");
        assert_eq!(ids[0], vocab as u32 - 2, "vocab {vocab}");
        assert!(
            ids[1..end].iter().all(|&id| id < vocab as u32 - 2),
            "vocab {vocab}: {ids:?}"
        );
        assert_eq!(
            *ids.iter().max().unwrap(),
            vocab as u32 - 1,
            "end token is the highest id"
        );
    }
    // Byte tokens survive at 1000; merges fold modulo 486 = 1000 - 514.
    assert_eq!(reduce_token_id(320, 1000), 320);
    assert_eq!(reduce_token_id(511, 1000), 511);
    assert_eq!(reduce_token_id(512, 1000), 512);
    assert_eq!(reduce_token_id(512 + 486, 1000), 512);
    assert_eq!(reduce_token_id(2368, 1000), 512 + (2368 - 512) % 486);
    assert_eq!(reduce_token_id(END_OF_TEXT, 1000), 999);
    assert_eq!(reduce_token_id(START_OF_TEXT, 1000), 998);
    assert_eq!(reduce_token_id(700, 100), 700 % 98);
    assert_eq!(reduce_token_id(12_345, 49_408), 12_345);
    assert_eq!(
        reduce_token_id(END_OF_TEXT, 1),
        2,
        "vocabularies below 3 act as 3"
    );
}

#[test]
fn decode_inverts_encode_on_clean_text() {
    let tokenizer = Tokenizer::shared();
    for text in ["a photo of a cat.", "naïve café 東京タワー", "c3po r2-d2"] {
        let ids = tokenizer.encode_ids(text);
        let spaced = tokenizer.decode(&ids);
        assert_eq!(
            spaced.split_whitespace().collect::<String>(),
            text.replace(' ', ""),
            "{ids:?}"
        );
    }
}

#[test]
fn html_unescape_follows_python() {
    assert_eq!(html_unescape("&amp;&lt;&gt;&quot;&#39;"), "&<>\"'");
    assert_eq!(html_unescape("&ampxyz &notit; &eacute"), "&xyz ¬it; é");
    assert_eq!(
        html_unescape("&#x41;&#66;&#0;&#128;&#x110000;&#1"),
        "AB\u{FFFD}€\u{FFFD}\u{1}".replace('\u{1}', "")
    );
    assert_eq!(
        html_unescape("&unknown; & &#; &#x;"),
        "&unknown; & &#; &#x;"
    );
}

#[test]
fn adversarial_captions_stay_fast() {
    let tokenizer = Tokenizer::shared();
    let start = std::time::Instant::now();
    let nested = format!("{}lt;", "&amp;".repeat(20_000));
    let ids = tokenizer.encode(&nested, 77, 49_408);
    assert_eq!((ids[0], ids[76]), (START_OF_TEXT, END_OF_TEXT));
    let mut rng = 12345u64;
    let word: String = (0..200_000)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (rng >> 59) as u8 % 26)
        })
        .collect();
    let ids = tokenizer.encode_ids(&word);
    assert!(ids.len() > 20_000, "{} tokens", ids.len());
    assert!(
        start.elapsed().as_secs_f64() < 10.0,
        "took {:?}",
        start.elapsed()
    );
}
