//! Completion prompt formats: how a conversation becomes one text prompt for a model without a
//! chat template (a pretrained base model), with few-shot examples and stop sequences.

use serde::{Deserialize, Serialize};

use super::{Role, Turn};
use crate::canonical::{sha256_hex, to_canonical_bytes};

/// Where the conversation goes in a template.
pub const CONVERSATION: &str = "{{conversation}}";
/// Where the system text (the card's prompt and the caller's system messages) goes.
pub const SYSTEM: &str = "{{system}}";

/// A tier's completion prompt format, as the system card's decoding profile declares it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFormat {
    /// The prompt text: few-shot examples and the `{{conversation}}` placeholder, optionally a
    /// `{{system}}` placeholder.
    pub template: String,
    /// Put before each user turn.
    #[serde(default = "default_user_prefix")]
    pub user_prefix: String,
    /// Put before each assistant turn, and last, for the model to continue.
    #[serde(default = "default_assistant_prefix")]
    pub assistant_prefix: String,
    /// Generation ends at the first of these; the answer is the text before it.
    pub stop: Vec<String>,
}

fn default_user_prefix() -> String {
    "Q: ".into()
}

fn default_assistant_prefix() -> String {
    "A:".into()
}

impl PromptFormat {
    /// The prompt for `turns`: each user turn as `user_prefix` + text, each assistant turn as
    /// `assistant_prefix` + " " + text, one per line, then `assistant_prefix`, where the prompt
    /// ends (whitespace after `{{conversation}}` in the template is dropped). System text goes
    /// at `{{system}}`, or before the template, followed by a blank line, when there is none.
    pub fn render(&self, system: Option<&str>, turns: &[Turn]) -> String {
        let mut conversation = String::new();
        for turn in turns.iter().filter(|t| t.role != Role::System) {
            match turn.role {
                Role::Assistant => {
                    conversation.push_str(&self.assistant_prefix);
                    conversation.push(' ');
                }
                _ => conversation.push_str(&self.user_prefix),
            }
            conversation.push_str(turn.content.trim());
            conversation.push('\n');
        }
        conversation.push_str(&self.assistant_prefix);
        let system = system.map(str::trim).filter(|s| !s.is_empty());
        // The prompt ends where the model is to continue: whitespace after the conversation
        // (a YAML block scalar's final newline, say) would make it start a new line instead.
        let body = self.template.trim_end().replacen(CONVERSATION, &conversation, 1);
        match (body.contains(SYSTEM), system) {
            (true, system) => body.replace(SYSTEM, system.unwrap_or("")),
            (false, Some(system)) => format!("{system}\n\n{body}"),
            (false, None) => body,
        }
    }

    /// sha256 of the format's canonical JSON: what the ledger records for each attempt.
    pub fn sha256(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        sha256_hex(&to_canonical_bytes(&value))
    }
}

/// A format with its digest, computed once when the system is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPromptFormat {
    pub format: PromptFormat,
    pub sha256: String,
}

impl LoadedPromptFormat {
    pub fn new(format: PromptFormat) -> LoadedPromptFormat {
        let sha256 = format.sha256();
        LoadedPromptFormat { format, sha256 }
    }
}

impl Serialize for LoadedPromptFormat {
    /// The ledger names a format by digest; the text is in the registry's system card.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(template: &str) -> PromptFormat {
        PromptFormat {
            template: template.into(),
            user_prefix: default_user_prefix(),
            assistant_prefix: default_assistant_prefix(),
            stop: vec!["\n".into()],
        }
    }

    fn turn(role: Role, content: &str) -> Turn {
        Turn { role, content: content.into() }
    }

    #[test]
    fn a_conversation_is_rendered_after_the_examples_ending_with_the_answer_prefix() {
        let format = format("Q: 2+2?\nA: 4\n\n{{conversation}}\n");
        let turns = [turn(Role::User, "Capital of France?"), turn(Role::Assistant, "Paris"), turn(Role::User, " And of Italy? ")];

        let prompt = format.render(None, &turns);

        assert_eq!(prompt, "Q: 2+2?\nA: 4\n\nQ: Capital of France?\nA: Paris\nQ: And of Italy?\nA:");
    }

    #[test]
    fn system_text_goes_to_its_placeholder_or_before_the_template() {
        let turns = [turn(Role::System, "ignored here: the caller passes system text"), turn(Role::User, "Hi")];

        let placed = format("{{system}}\n---\n{{conversation}}").render(Some("Be brief."), &turns);
        let prepended = format("{{conversation}}").render(Some("Be brief."), &turns);
        let none = format("{{system}}|{{conversation}}").render(None, &turns);

        assert_eq!(placed, "Be brief.\n---\nQ: Hi\nA:");
        assert_eq!(prepended, "Be brief.\n\nQ: Hi\nA:");
        assert_eq!(none, "|Q: Hi\nA:");
    }

    #[test]
    fn the_digest_changes_with_any_part_of_the_format() {
        let base = format("{{conversation}}");
        let mut other_stop = base.clone();
        other_stop.stop = vec!["\n\n".into()];

        assert_eq!(base.sha256(), format("{{conversation}}").sha256());
        assert_ne!(base.sha256(), other_stop.sha256());
        assert_ne!(base.sha256(), format("Q: x\nA: y\n{{conversation}}").sha256());
        assert_eq!(base.sha256().len(), 64);
    }
}
