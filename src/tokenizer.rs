//! Zamba's tokenizer: encoding prompts, decoding ids, and streaming decode for generation.
//!
//! Zamba-7B-v1 uses Mistral's sentencepiece-style BPE (vocab 32000, byte fallback, `<s>` = 1,
//! `</s>` = 2, id 0 = `[PAD]`). A copy of its `tokenizer.json` is embedded in the crate
//! ([`BUNDLED_TOKENIZER_JSON`]), so a checkpoint folder without one still works.
//!
//! [`TokenStream`] turns ids into text one at a time without ever splitting a multi-byte
//! character, and its output always adds up to the one-shot [`ZambaTokenizer::decode`].

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Result, ZambaError};

/// The `tokenizer.json` of Zyphra/Zamba-7B-v1, embedded at build time (see
/// `assets/zamba-7b-v1/SOURCE.md` for its provenance).
pub const BUNDLED_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/zamba-7b-v1/tokenizer.json");

/// The file name looked for in a checkpoint folder by [`ZambaTokenizer::for_model_dir`].
pub const TOKENIZER_FILE_NAME: &str = "tokenizer.json";

/// U+FFFD, what the decoder writes for bytes that do not (yet) form a valid character.
const REPLACEMENT_CHAR: char = '\u{FFFD}';

/// A loaded Hugging Face tokenizer with the few operations the engine needs.
#[derive(Clone, Debug)]
pub struct ZambaTokenizer {
    inner: Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl ZambaTokenizer {
    /// Loads a `tokenizer.json` file. A missing file is [`ZambaError::NotFound`]; a file that
    /// is not a valid tokenizer is [`ZambaError::Tokenizer`], naming the path.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read(path).map_err(|e| ZambaError::io("tokenizer file", path, e))?;
        Self::from_bytes(&json).map_err(|e| match e {
            ZambaError::Tokenizer(msg) => ZambaError::Tokenizer(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses the contents of a `tokenizer.json`. Anything that is not a valid tokenizer is
    /// [`ZambaError::Tokenizer`].
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json)
            .map_err(|e| ZambaError::Tokenizer(format!("cannot parse tokenizer.json: {e}")))?;
        // Prompts are encoded one at a time: the file's batch padding and any truncation would
        // only get in the way.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ZambaError::Tokenizer(format!("cannot disable truncation: {e}")))?;
        let vocab_size = inner.get_vocab_size(true);
        if vocab_size == 0 {
            return Err(ZambaError::Tokenizer(
                "tokenizer.json has an empty vocabulary".into(),
            ));
        }
        let bos_id = inner.token_to_id("<s>");
        let eos_id = inner.token_to_id("</s>");
        Ok(Self {
            inner,
            vocab_size,
            bos_id,
            eos_id,
        })
    }

    /// The Zamba-7B-v1 tokenizer embedded in the crate.
    pub fn bundled() -> Result<Self> {
        Self::from_bytes(BUNDLED_TOKENIZER_JSON)
    }

    /// Finds `tokenizer.json` in a checkpoint folder, else falls back to the bundled one.
    /// A folder that does not exist is [`ZambaError::NotFound`].
    pub fn for_model_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ZambaError::NotFound {
                what: "model folder",
                path: dir.to_path_buf(),
            });
        }
        let file = dir.join(TOKENIZER_FILE_NAME);
        if file.is_file() {
            Self::from_file(&file)
        } else {
            Self::bundled()
        }
    }

    /// Number of token ids, added tokens included (32000 for Zamba).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of the beginning-of-sequence token `<s>` (1 for Zamba), if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Id of the end-of-sequence token `</s>` (2 for Zamba), if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Id of a vocabulary entry such as `"▁Hey"` or `"<0xF0>"`, if there is one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of an id (e.g. `"▁Hey"`), or `None` outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes a prompt the way Hugging Face does for Zamba (`add_special_tokens=True`): `<s>`
    /// first, then the text. Special-token text such as `"</s>"` in the prompt becomes its id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Encodes text without adding any special token.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ZambaError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text; with `skip_special` the special tokens (`<s>`, `</s>`) are left
    /// out. An id outside the vocabulary is [`ZambaError::InvalidInput`].
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.decode_unchecked(ids, skip_special)
    }

    /// Starts an incremental decode (special tokens skipped), for printing generated text as
    /// it comes.
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream {
            tokenizer: self,
            ids: Vec::new(),
            read_offset: 0,
            prefix_text: String::new(),
            open_byte_run: false,
        }
    }

    fn check_id(&self, id: u32) -> Result<()> {
        let known = (id as usize) < self.vocab_size && self.inner.id_to_token(id).is_some();
        if known {
            Ok(())
        } else {
            Err(ZambaError::InvalidInput(format!(
                "token id {id} is outside the tokenizer vocabulary (size {})",
                self.vocab_size
            )))
        }
    }

    fn decode_unchecked(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ZambaError::Tokenizer(format!("cannot decode ids: {e}")))
    }

    /// How the decoder treats an id: dropped when skipping specials, part of a byte run
    /// (`<0xE2>`, recognised as the `ByteFallback` decoder does), or plain text.
    fn kind(&self, id: u32) -> TokenKind {
        let Some(token) = self.inner.id_to_token(id) else {
            return TokenKind::Text;
        };
        if self.inner.get_added_vocabulary().is_special_token(&token) {
            TokenKind::Special
        } else if token.len() == 6
            && token.starts_with("<0x")
            && token.ends_with('>')
            && token
                .get(3..5)
                .is_some_and(|hex| u8::from_str_radix(hex, 16).is_ok())
        {
            TokenKind::Byte
        } else {
            TokenKind::Text
        }
    }
}

/// See [`ZambaTokenizer::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Special,
    Byte,
    Text,
}

/// Incremental detokenizer for streaming output: push one id at a time, get back the newly
/// completed text.
///
/// It never emits a broken UTF-8 character: byte-fallback tokens (like `<0xE2>`) are held back
/// while a run of them may still grow, because the decoder turns each run as a whole into
/// either its characters or, if invalid, one U+FFFD per byte. Concatenating the results of
/// all pushes plus [`TokenStream::finish`] equals `decode(all ids, skip_special = true)`.
///
/// Internally it decodes a short window of the latest ids and compares it with the decode of
/// the window's first `read_offset` ids, whose text was already emitted. The window always
/// keeps the previously emitted chunk as context, so the decoder's removal of the leading
/// space only ever touches text that is already out.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tokenizer: &'a ZambaTokenizer,
    /// The window: the last emitted chunk's ids, then the ids not yet emitted.
    ids: Vec<u32>,
    /// Where the not-yet-emitted ids start in `ids`.
    read_offset: usize,
    /// `decode(ids[..read_offset])`, cached.
    prefix_text: String,
    /// Whether the last non-special id is a byte-fallback token, i.e. a byte run is open.
    open_byte_run: bool,
}

impl TokenStream<'_> {
    /// Adds one generated id and returns the text it completes (often empty, e.g. for `</s>`
    /// or in the middle of a multi-byte character). An id outside the vocabulary is
    /// [`ZambaError::InvalidInput`] and leaves the stream unchanged.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_id(id)?;
        self.ids.push(id);
        match self.tokenizer.kind(id) {
            TokenKind::Special => {}
            TokenKind::Byte => self.open_byte_run = true,
            TokenKind::Text => self.open_byte_run = false,
        }
        if self.open_byte_run {
            return Ok(String::new());
        }
        self.emit(false)
    }

    /// Returns whatever text is still held back (e.g. an incomplete byte sequence, which
    /// decodes to U+FFFD as in the one-shot decode) and resets the stream for a new text.
    pub fn finish(&mut self) -> Result<String> {
        let rest = self.emit(true);
        self.ids.clear();
        self.read_offset = 0;
        self.prefix_text.clear();
        self.open_byte_run = false;
        rest
    }

    /// Decodes the window and returns the text past what was already emitted; advances the
    /// window when something is emitted.
    fn emit(&mut self, last: bool) -> Result<String> {
        let text = self.tokenizer.decode_unchecked(&self.ids, true)?;
        if !last && text.ends_with(REPLACEMENT_CHAR) {
            // Maybe an incomplete character (decoders without byte runs, e.g. byte-level
            // BPE, write U+FFFD for it); wait for more.
            return Ok(String::new());
        }
        let new = match text.strip_prefix(self.prefix_text.as_str()) {
            Some(new) => new.to_owned(),
            // Cannot happen with Zamba's decoder (windows only end after a closed byte run);
            // emit what differs rather than fail.
            None => text
                .get(common_prefix_len(&text, &self.prefix_text)..)
                .unwrap_or_default()
                .to_owned(),
        };
        if new.is_empty() || last {
            return Ok(new);
        }
        // The chunk just emitted becomes the context of the next window.
        let start = self.read_offset.min(self.ids.len());
        self.ids.drain(..start);
        self.read_offset = self.ids.len();
        self.prefix_text = self.tokenizer.decode_unchecked(&self.ids, true)?;
        Ok(new)
    }
}

/// Length in bytes of the longest common prefix of two strings, on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i)
}
