//! Tests of `zamba::tokenizer` against the bundled Zamba-7B-v1 tokenizer.json.

use std::path::PathBuf;

use zamba::tokenizer::{ZambaTokenizer, BUNDLED_TOKENIZER_JSON};
use zamba::ZambaError;

const PROMPT: &str = "Hey how are you doing on this lovely evening?";

/// Ids of `PROMPT` from `encode` (with `<s>`), found by running the tokenizer; they match the
/// vocabulary entries `<s> ▁Hey ▁how ▁are ▁you ▁doing ▁on ▁this ▁lovely ▁evening ?`.
const PROMPT_IDS: [u32; 11] = [1, 17162, 910, 460, 368, 2548, 356, 456, 12393, 6856, 28804];

fn tok() -> ZambaTokenizer {
    match ZambaTokenizer::bundled() {
        Ok(t) => t,
        Err(e) => panic!("bundled tokenizer does not load: {e}"),
    }
}

/// A fresh, empty folder under the system temp dir; removed by `Drop`.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("zamba-tokenizer-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_byte_token(t: &ZambaTokenizer, id: u32) -> bool {
    t.id_to_token(id)
        .is_some_and(|s| s.len() == 6 && s.starts_with("<0x") && s.ends_with('>'))
}

/// Pushes `ids` one at a time; returns every chunk, `finish()` last.
fn stream_chunks(t: &ZambaTokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = t.stream();
    let mut chunks: Vec<String> = ids.iter().map(|&id| stream.push(id).expect("push")).collect();
    chunks.push(stream.finish().expect("finish"));
    chunks
}

/// Streams `text`'s ids: no chunk may hold U+FFFD, and the chunks must add up to the one-shot
/// decode, which must give back `text` itself.
fn check_stream_round_trip(t: &ZambaTokenizer, text: &str) -> Vec<u32> {
    let ids = t.encode(text).expect("encode");
    let chunks = stream_chunks(t, &ids);
    for (i, chunk) in chunks.iter().enumerate() {
        assert!(
            !chunk.contains('\u{FFFD}'),
            "chunk {i} of {text:?} is {chunk:?}; all chunks: {chunks:?}"
        );
    }
    let one_shot = t.decode(&ids, true).expect("decode");
    assert_eq!(one_shot, text);
    assert_eq!(chunks.concat(), one_shot, "chunks: {chunks:?}");
    ids
}

#[test]
fn bundled_vocab_and_special_ids() {
    let t = tok();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.id_to_token(1).as_deref(), Some("<s>"));
    assert_eq!(t.id_to_token(2).as_deref(), Some("</s>"));
    // Zamba's id 0 is "[PAD]", a plain vocab entry (not an added special token), so it
    // decodes as "[PAD]" whether or not specials are skipped; "<unk>" is not in the vocab.
    assert_eq!(t.id_to_token(0).as_deref(), Some("[PAD]"));
    assert_eq!(t.decode(&[0], false).unwrap(), "[PAD]");
    assert_eq!(t.decode(&[0], true).unwrap(), "[PAD]");
    assert_eq!(t.token_to_id("<unk>"), None);
    // <s> and </s> are special: kept or dropped on request.
    assert_eq!(t.decode(&[1, 2], false).unwrap(), "<s></s>");
    assert_eq!(t.decode(&[1, 2], true).unwrap(), "");
    // The byte-fallback tokens follow the three specials: <0x00> = 3 ... <0xFF> = 258.
    assert_eq!(t.token_to_id("<0x00>"), Some(3));
    assert_eq!(t.token_to_id("<0xF0>"), Some(3 + 0xF0));
    assert_eq!(t.token_to_id("<0xFF>"), Some(258));
}

#[test]
fn encode_prompt_matches_vocab_and_round_trips() {
    let t = tok();
    let ids = t.encode(PROMPT).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids, PROMPT_IDS);

    // Cross-check against the vocabulary: the normalizer turns spaces into "▁" and prepends
    // one, and every word here is a single vocab entry.
    let pieces = [
        "▁Hey",
        "▁how",
        "▁are",
        "▁you",
        "▁doing",
        "▁on",
        "▁this",
        "▁lovely",
        "▁evening",
        "?",
    ];
    let mut expected = vec![t.bos_id().unwrap()];
    expected.extend(pieces.iter().map(|p| t.token_to_id(p).unwrap()));
    assert_eq!(ids, expected);
    assert_eq!(t.token_to_id("▁Hey"), Some(17162));

    assert_eq!(t.encode_plain(PROMPT).unwrap(), &ids[1..]);
    assert_eq!(t.decode(&ids, true).unwrap(), PROMPT);
    // As in the transformers Zamba test: "<s>" then the text with its leading space.
    assert_eq!(t.decode(&ids, false).unwrap(), format!("<s> {PROMPT}"));
}

#[test]
fn encode_plain_keeps_leading_space() {
    let t = tok();
    let ids = t.encode_plain(" Hello world").unwrap();
    assert_eq!(ids, [28705, 22557, 1526]);
    assert_eq!(t.id_to_token(28705).as_deref(), Some("▁"));
    assert_eq!(t.token_to_id("▁Hello"), Some(22557));
    assert_eq!(t.token_to_id("▁world"), Some(1526));
    assert_eq!(t.decode(&ids, true).unwrap(), " Hello world");
    assert_eq!(t.encode(" Hello world").unwrap(), [1, 28705, 22557, 1526]);
    // Text after a special token still gets the dummy "▁" prefix.
    assert_eq!(t.encode_plain("<s>the cat").unwrap(), [1, 272, 5255]);
    assert_eq!(t.encode("").unwrap(), [1]);
    assert_eq!(t.encode_plain("").unwrap(), Vec::<u32>::new());
}

#[test]
fn stream_multibyte_text_in_vocab() {
    let t = tok();
    let ids = check_stream_round_trip(&t, "naïve café — 東京 🚀 ok");
    // These characters are all vocab entries, so chunks come out token by token.
    let chunks = stream_chunks(&t, &ids);
    assert_eq!(
        chunks,
        ["", "na", "ï", "ve", " café", " —", " ", "東", "京", " ", "🚀", " ok", ""]
    );
}

#[test]
fn stream_byte_fallback_emoji() {
    let t = tok();
    for text in ["🦀🫠 x 🚀", "a🦀", "🦀", "x 🦀\n🫠🫠 done", "Crab: 🦀, melt: 🫠."] {
        let ids = check_stream_round_trip(&t, text);
        let byte_ids = ids.iter().filter(|&&id| is_byte_token(&t, id)).count();
        assert!(
            byte_ids >= 4,
            "{text:?} should need byte-fallback tokens, got {ids:?}"
        );
    }
    // The crab is the four byte tokens F0 9F A6 80.
    let ids = t.encode_plain("🦀").unwrap();
    let bytes: Vec<u32> = ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]
        .iter()
        .map(|b| t.token_to_id(b).unwrap())
        .collect();
    assert_eq!(ids[ids.len() - 4..], bytes);
    // Nothing comes out while the run of byte tokens is open.
    let mut stream = t.stream();
    assert_eq!(stream.push(t.token_to_id("▁a").unwrap()).unwrap(), "a");
    for &b in &bytes {
        assert_eq!(stream.push(b).unwrap(), "");
    }
    assert_eq!(stream.push(t.token_to_id("▁b").unwrap()).unwrap(), "🦀 b");
    assert_eq!(stream.finish().unwrap(), "");
}

#[test]
fn stream_other_texts() {
    let t = tok();
    for text in [
        PROMPT,
        " Hello world",
        "  two leading spaces",
        "line one\nline two\n\n  indented",
        "Ελληνικά, русский, العربية, हिन्दी, 한국어, ไทย",
        "",
    ] {
        check_stream_round_trip(&t, text);
    }
}

#[test]
fn stream_matches_decode_on_awkward_ids() {
    let t = tok();
    let id = |s: &str| t.token_to_id(s).unwrap();
    let cases: Vec<Vec<u32>> = vec![
        // "é" as bytes, then a stray continuation byte: the whole run becomes U+FFFD.
        vec![id("▁a"), id("<0xC3>"), id("<0xA9>"), id("<0x80>"), id("▁b")],
        // An emoji cut short at the end.
        vec![
            id("▁a"),
            id("<0xF0>"),
            id("<0x9F>"),
            id("<0xA6>"),
            id("<0x80>"),
            id("<0xF0>"),
        ],
        // Specials inside a byte run are skipped, so the run still joins up.
        vec![id("▁a"), id("<0xC3>"), 2, id("<0xA9>"), 1, id("▁b")],
        // Specials and lone spaces at the start and in the middle.
        vec![1, 2, id("▁"), id("▁"), id("▁x"), 2, id("▁"), 1, id("▁y"), 0],
    ];
    for ids in cases {
        let chunks = stream_chunks(&t, &ids);
        assert_eq!(chunks.concat(), t.decode(&ids, true).unwrap(), "{ids:?}");
    }

    // Pseudo-random ids, biased towards byte tokens, specials and "▁".
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    for _ in 0..20 {
        let ids: Vec<u32> = (0..150)
            .map(|_| match next() % 10 {
                0..=3 => 3 + next() % 256,
                4 => 1 + next() % 2,
                5 => 28705,
                _ => next() % 32000,
            })
            .collect();
        let chunks = stream_chunks(&t, &ids);
        assert_eq!(chunks.concat(), t.decode(&ids, true).unwrap(), "{ids:?}");
    }
}

#[test]
fn stream_finish_resets() {
    let t = tok();
    let mut stream = t.stream();
    let hello = t.encode_plain("Hello").unwrap();
    for &id in &hello {
        stream.push(id).unwrap();
    }
    stream.finish().unwrap();
    // A new text starts afresh: its leading space is stripped as in a one-shot decode.
    let world = t.encode_plain("world").unwrap();
    let out: String = world.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(out + &stream.finish().unwrap(), "world");
}

#[test]
fn errors() {
    let t = tok();

    let missing = std::env::temp_dir().join("zamba-no-such-dir-7f3a/tokenizer.json");
    let err = ZambaTokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, ZambaError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

    let err = ZambaTokenizer::from_bytes(b"not json").unwrap_err();
    assert!(matches!(err, ZambaError::Tokenizer(_)), "{err:?}");

    let err = t.decode(&[32000], true).unwrap_err();
    assert!(matches!(err, ZambaError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("32000"), "{err}");
    let err = t.decode(&[5, u32::MAX], false).unwrap_err();
    assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");

    // A bad id is refused by the stream, which carries on unchanged.
    let mut stream = t.stream();
    assert_eq!(stream.push(t.token_to_id("▁Hey").unwrap()).unwrap(), "Hey");
    let err = stream.push(32000).unwrap_err();
    assert!(matches!(err, ZambaError::InvalidInput(_)), "{err:?}");
    assert_eq!(stream.push(t.token_to_id("▁you").unwrap()).unwrap(), " you");
}

#[test]
fn from_file_reads_and_names_bad_files() {
    let dir = TempDir::new("from-file");
    let good = dir.0.join("tokenizer.json");
    std::fs::write(&good, BUNDLED_TOKENIZER_JSON).unwrap();
    let t = ZambaTokenizer::from_file(&good).unwrap();
    assert_eq!(t.encode(PROMPT).unwrap(), PROMPT_IDS);

    let bad = dir.0.join("broken.json");
    std::fs::write(&bad, b"{\"version\": ").unwrap();
    let err = ZambaTokenizer::from_file(&bad).unwrap_err();
    assert!(matches!(err, ZambaError::Tokenizer(_)), "{err:?}");
    assert!(err.to_string().contains(&bad.display().to_string()), "{err}");
}

#[test]
fn for_model_dir_falls_back_to_bundled() {
    let dir = TempDir::new("model-dir");
    let t = ZambaTokenizer::for_model_dir(&dir.0).unwrap();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!(t.encode(PROMPT).unwrap(), PROMPT_IDS);

    // A tokenizer.json in the folder is the one used: a broken one is an error naming it.
    let file = dir.0.join("tokenizer.json");
    std::fs::write(&file, b"not json").unwrap();
    let err = ZambaTokenizer::for_model_dir(&dir.0).unwrap_err();
    assert!(matches!(err, ZambaError::Tokenizer(_)), "{err:?}");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");

    // A folder that does not exist is an error, not a silent fallback.
    let gone = dir.0.join("no-such-model");
    let err = ZambaTokenizer::for_model_dir(&gone).unwrap_err();
    assert!(matches!(err, ZambaError::NotFound { .. }), "{err:?}");
}
