//! Prompt templates: role markers around each turn; loss on assistant content and EOS.
//!
//! A chat sample renders as
//! `[system_prefix system system_suffix] (user_prefix user user_suffix assistant_prefix
//! ⟨assistant eos⟩ assistant_suffix)*` where only ⟨…⟩ is in the loss.
//!
//! ```
//! use data::config::{TemplateConfig, TemplatePreset};
//! use data::template::Template;
//! let t = Template::from_config(&TemplateConfig::default());
//! assert_eq!(t.user_prefix, "<|im_start|>user\n");
//! assert_eq!(t.eos, "<|im_end|>");
//! let m = Template::from_config(&TemplateConfig { preset: TemplatePreset::Mftcoder, ..Default::default() });
//! assert_eq!(m.assistant_prefix, "<s>bot\n");
//! ```

use crate::config::{TemplateConfig, TemplatePreset};
use serde::Serialize;

/// Resolved role markers (see [`TemplateConfig`] for their meaning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct Template {
    pub system_prefix: String,
    pub system_suffix: String,
    pub user_prefix: String,
    pub user_suffix: String,
    pub assistant_prefix: String,
    pub eos: String,
    pub assistant_suffix: String,
    pub default_system: Option<String>,
}

impl Template {
    /// The markers of `preset`.
    pub fn preset(preset: TemplatePreset) -> Self {
        let s = |x: &str| x.to_string();
        match preset {
            TemplatePreset::Chatml => Self {
                system_prefix: s("<|im_start|>system\n"),
                system_suffix: s("<|im_end|>\n"),
                user_prefix: s("<|im_start|>user\n"),
                user_suffix: s("<|im_end|>\n"),
                assistant_prefix: s("<|im_start|>assistant\n"),
                eos: s("<|im_end|>"),
                assistant_suffix: s("\n"),
                default_system: None,
            },
            TemplatePreset::Mftcoder => Self {
                system_prefix: s("<s>system\n"),
                system_suffix: s("\n"),
                user_prefix: s("<s>human\n"),
                user_suffix: s("\n"),
                assistant_prefix: s("<s>bot\n"),
                eos: s("<|endoftext|>"),
                assistant_suffix: s(""),
                default_system: None,
            },
        }
    }

    /// The preset of `cfg` with its overrides applied.
    pub fn from_config(cfg: &TemplateConfig) -> Self {
        let mut t = Self::preset(cfg.preset);
        let set = |dst: &mut String, src: &Option<String>| {
            if let Some(v) = src {
                dst.clone_from(v);
            }
        };
        set(&mut t.system_prefix, &cfg.system_prefix);
        set(&mut t.system_suffix, &cfg.system_suffix);
        set(&mut t.user_prefix, &cfg.user_prefix);
        set(&mut t.user_suffix, &cfg.user_suffix);
        set(&mut t.assistant_prefix, &cfg.assistant_prefix);
        set(&mut t.eos, &cfg.eos);
        set(&mut t.assistant_suffix, &cfg.assistant_suffix);
        t.default_system.clone_from(&cfg.default_system);
        t
    }
}
