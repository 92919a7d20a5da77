//! Tokenization with loss masks.
//!
//! [`Encoder`] turns a [`Content`] into `tokens: Vec<u32>` and a per-token `loss: Vec<u8>`
//! (1 on assistant content and the EOS that ends each assistant turn, 0 on the prompt and the
//! markers; 1 everywhere for `text` samples). Markers are tokenized once; content is tokenized
//! per segment without special tokens added.
//!
//! ```no_run
//! use data::{config::TemplateConfig, format::Content, tokenize::Encoder};
//! let enc = Encoder::from_file("data/tokenizers/smollm2/tokenizer.json".as_ref(), &TemplateConfig::default()).unwrap();
//! let s = enc.encode(&Content::Chat { system: None, rounds: vec![("Hi".into(), "Hello".into())] });
//! assert_eq!(s.tokens.len(), s.loss.len());
//! assert_eq!(*s.tokens.last().unwrap(), enc.eos_id()); // then "\n" with loss 0 for chatml
//! ```

use crate::config::TemplateConfig;
use crate::format::Content;
use crate::template::Template;
use crate::{DataError, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// One tokenized sample: `tokens[i]` with `loss[i] = 1` when token i is a training target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    /// Token ids, length L.
    pub tokens: Vec<u32>,
    /// 0/1 per token, length L.
    pub loss: Vec<u8>,
}

impl Encoded {
    fn push(&mut self, ids: &[u32], loss: u8) {
        self.tokens.extend_from_slice(ids);
        self.loss.extend(std::iter::repeat_n(loss, ids.len()));
    }
}

struct Markers {
    system_prefix: Vec<u32>,
    system_suffix: Vec<u32>,
    user_prefix: Vec<u32>,
    user_suffix: Vec<u32>,
    assistant_prefix: Vec<u32>,
    assistant_suffix: Vec<u32>,
}

/// A tokenizer plus a resolved template.
pub struct Encoder {
    tokenizer: Tokenizer,
    path: PathBuf,
    hash: String,
    template: Template,
    markers: Markers,
    eos: u32,
    max_token_bytes: usize,
}

/// Extra tokens' worth of text kept beyond the `max_seq_len + 1` tokens a sample can use, in
/// [`Encoder::text_budget_bytes`]: room to search back for a pre-token boundary.
pub const BUDGET_MARGIN_TOKENS: usize = 16;
/// Extra bytes kept in [`Encoder::text_budget_bytes`].
pub const BUDGET_MARGIN_BYTES: usize = 256;

impl Encoder {
    /// Loads `tokenizer.json` and resolves the template; the EOS marker must be one token.
    pub fn from_file(path: &Path, template: &TemplateConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let hash = hex(&Sha256::digest(&bytes));
        let template = Template::from_config(template);
        let mut enc = Self {
            tokenizer,
            path: path.to_path_buf(),
            hash,
            markers: Markers {
                system_prefix: vec![],
                system_suffix: vec![],
                user_prefix: vec![],
                user_suffix: vec![],
                assistant_prefix: vec![],
                assistant_suffix: vec![],
            },
            eos: 0,
            max_token_bytes: 1,
            template: template.clone(),
        };
        enc.max_token_bytes = longest_token_bytes(&enc.tokenizer);
        enc.eos = match enc.tokenizer.token_to_id(&template.eos) {
            Some(id) => id,
            None => {
                return Err(DataError::Tokenizer {
                    path: path.to_path_buf(),
                    message: format!(
                        "template eos {:?} is not a single token of this tokenizer",
                        template.eos
                    ),
                })
            }
        };
        enc.markers = Markers {
            system_prefix: enc.ids(&template.system_prefix),
            system_suffix: enc.ids(&template.system_suffix),
            user_prefix: enc.ids(&template.user_prefix),
            user_suffix: enc.ids(&template.user_suffix),
            assistant_prefix: enc.ids(&template.assistant_prefix),
            assistant_suffix: enc.ids(&template.assistant_suffix),
        };
        Ok(enc)
    }

    /// Token ids of a one-turn chat prompt, up to and including the assistant prefix:
    /// `[system_prefix system system_suffix] user_prefix prompt user_suffix assistant_prefix`,
    /// each piece tokenized separately exactly as [`Encoder::encode`] does for training
    /// samples (what generation feeds a model trained with this template). `system` defaults
    /// to the template's default system message.
    pub fn chat_prompt(&self, prompt: &str, system: Option<&str>) -> Vec<u32> {
        let t = self.template();
        let mut ids = Vec::new();
        if let Some(sys) = system.or(t.default_system.as_deref()) {
            ids.extend(self.ids(&t.system_prefix));
            ids.extend(self.ids(sys));
            ids.extend(self.ids(&t.system_suffix));
        }
        ids.extend(self.ids(&t.user_prefix));
        ids.extend(self.ids(prompt));
        ids.extend(self.ids(&t.user_suffix));
        ids.extend(self.ids(&t.assistant_prefix));
        ids
    }

    /// Token ids of `text` (no special tokens added; special-token text such as
    /// `<|im_end|>` inside `text` is still recognised, as by the HF tokenizer).
    pub fn ids(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        // Encoding only fails on truncation/padding settings this crate does not use; an
        // unencodable string degrades to no tokens rather than aborting a run.
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Renders and tokenizes one whole sample (work and memory grow with its text; see
    /// [`Encoder::encode_bounded`] for samples that will be cut to `max_seq_len`).
    pub fn encode(&self, content: &Content) -> Encoded {
        self.render(content, None).0
    }

    /// Renders and tokenizes one sample whose tokens will be cut to `max_seq_len + 1`, doing
    /// O(`max_seq_len`) work whatever the length of its text: each text field is first cut
    /// with [`cut_text`] to [`Encoder::text_budget_bytes`]`(max_seq_len)` bytes, and rounds
    /// after the first `max_seq_len + 1` tokens are not rendered. Returns the sample and
    /// whether anything was cut (then the sample is longer than `max_seq_len + 1` tokens and
    /// its length is a lower bound of the uncut length).
    ///
    /// Why the first `max_seq_len + 1` tokens (and their loss) equal those of
    /// [`Encoder::encode`]: let n = `max_seq_len + 1` and L = [`Encoder::max_token_bytes`].
    /// Every token covers at most L bytes of text, so the first n tokens of a field lie in its
    /// first n·L bytes, and a field longer than the budget has more than n tokens whether
    /// cut or not (so the overlong policy decides the same). Tokenization (pre-tokenizer, then
    /// BPE within each pre-token) can only change at the pre-token spanning the cut, and
    /// [`cut_text`] cuts at a pre-token boundary (a whitespace character after a non-whitespace
    /// one, which no GPT-2-style split pattern crosses) at or after byte (n+1)·L, so the
    /// first n tokens are unaffected. Only when a field has no such boundary in its last
    /// [`BUDGET_MARGIN_TOKENS`]·L bytes before the budget (one word longer than that) is the
    /// cut made mid-pre-token, [`BUDGET_MARGIN_TOKENS`] tokens past the n-th: exact unless BPE
    /// merges propagate a change that far back.
    pub fn encode_bounded(&self, content: &Content, max_seq_len: usize) -> (Encoded, bool) {
        self.render(content, Some(max_seq_len))
    }

    /// Longest token of the vocabulary (added tokens included), in bytes of its decoded text,
    /// at least 1.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Bytes of one text field kept by [`Encoder::encode_bounded`]:
    /// (`max_seq_len` + 1 + [`BUDGET_MARGIN_TOKENS`]) · [`Encoder::max_token_bytes`] +
    /// [`BUDGET_MARGIN_BYTES`] (saturating).
    pub fn text_budget_bytes(&self, max_seq_len: usize) -> usize {
        max_seq_len
            .saturating_add(1 + BUDGET_MARGIN_TOKENS)
            .saturating_mul(self.max_token_bytes)
            .saturating_add(BUDGET_MARGIN_BYTES)
    }

    /// Renders `content`; with `Some(max_seq_len)` text fields are cut to the budget and
    /// rounds after `max_seq_len + 1` tokens are left out. Returns whether anything was cut.
    fn render(&self, content: &Content, max_seq_len: Option<usize>) -> (Encoded, bool) {
        let m = &self.markers;
        let mut out = Encoded::default();
        let mut cut = false;
        let bounds = max_seq_len.map(|msl| {
            let floor = msl.saturating_add(2).saturating_mul(self.max_token_bytes);
            (floor, self.text_budget_bytes(msl), msl.saturating_add(1))
        });
        let mut ids = |text: &str| match bounds {
            Some((floor, budget, _)) => {
                let kept = cut_text(text, floor, budget);
                cut |= kept.len() < text.len();
                self.ids(kept)
            }
            None => self.ids(text),
        };
        match content {
            Content::Text(text) => {
                out.push(&ids(text), 1);
                out.push(&[self.eos], 1);
            }
            Content::Chat { system, rounds } => {
                if let Some(sys) = system.as_ref().or(self.template.default_system.as_ref()) {
                    out.push(&m.system_prefix, 0);
                    out.push(&ids(sys), 0);
                    out.push(&m.system_suffix, 0);
                }
                for (user, assistant) in rounds {
                    if bounds.is_some_and(|(_, _, keep)| out.tokens.len() > keep) {
                        // Everything from here on would be truncated away.
                        cut = true;
                        break;
                    }
                    out.push(&m.user_prefix, 0);
                    out.push(&ids(user), 0);
                    out.push(&m.user_suffix, 0);
                    out.push(&m.assistant_prefix, 0);
                    out.push(&ids(assistant), 1);
                    out.push(&[self.eos], 1);
                    out.push(&m.assistant_suffix, 0);
                }
            }
        }
        (out, cut)
    }

    /// The EOS id that ends each assistant turn.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Hex SHA-256 of the `tokenizer.json` bytes.
    pub fn tokenizer_hash(&self) -> &str {
        &self.hash
    }

    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The resolved template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// `text` cut to at most `budget` bytes, for [`Encoder::encode_bounded`]: at the last
/// pre-token boundary in `floor..=budget` (a byte offset where an ASCII whitespace character
/// follows a non-whitespace character), else at the last char boundary at or before `budget`.
/// `text` itself when it is not longer than `budget`.
///
/// ```
/// use data::tokenize::cut_text;
/// assert_eq!(cut_text("short", 0, 10), "short");
/// assert_eq!(cut_text("aaa bbb ccc", 2, 9), "aaa bbb");
/// assert_eq!(cut_text("aaaaaaaaaa", 2, 5), "aaaaa");
/// assert_eq!(cut_text("ééééé", 0, 5), "éé"); // never inside a character
/// ```
pub fn cut_text(text: &str, floor: usize, budget: usize) -> &str {
    if text.len() <= budget {
        return text;
    }
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes();
    let mut i = end;
    while i >= floor.max(1) {
        if bytes[i].is_ascii_whitespace()
            && text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace())
        {
            return &text[..i];
        }
        i -= 1;
    }
    &text[..end]
}

/// Longest decoded token of `tokenizer` in bytes (at least 1).
fn longest_token_bytes(tokenizer: &Tokenizer) -> usize {
    let n = tokenizer.get_vocab_size(true) as u32;
    (0..n)
        .filter_map(|id| tokenizer.decode(&[id], false).ok())
        .map(|t| t.len())
        .max()
        .unwrap_or(1)
        .max(1)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
