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
}

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
            template: template.clone(),
        };
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

    /// Renders and tokenizes one sample.
    pub fn encode(&self, content: &Content) -> Encoded {
        let m = &self.markers;
        let mut out = Encoded::default();
        match content {
            Content::Text(text) => {
                out.push(&self.ids(text), 1);
                out.push(&[self.eos], 1);
            }
            Content::Chat { system, rounds } => {
                if let Some(sys) = system.as_ref().or(self.template.default_system.as_ref()) {
                    out.push(&m.system_prefix, 0);
                    out.push(&self.ids(sys), 0);
                    out.push(&m.system_suffix, 0);
                }
                for (user, assistant) in rounds {
                    out.push(&m.user_prefix, 0);
                    out.push(&self.ids(user), 0);
                    out.push(&m.user_suffix, 0);
                    out.push(&m.assistant_prefix, 0);
                    out.push(&self.ids(assistant), 1);
                    out.push(&[self.eos], 1);
                    out.push(&m.assistant_suffix, 0);
                }
            }
        }
        out
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
