//! entities: token classification, each text's labelled tokens grouped into entities the way
//! `transformers`' token-classification pipeline groups them (its `aggregation_strategy`),
//! with character offsets into the text:
//!
//! - `none`: every token that is not `O`, with its label (`entity`), probability and index;
//! - `simple`: adjacent tokens of one type joined (`B-` starts a new one), the score their mean;
//! - `first`, `average`, `max`: each word first takes one label (its first token's, its
//!   tokens' mean probabilities', or its most confident token's), then words are joined as
//!   `simple` joins tokens.
//!
//! Offsets count characters (Unicode scalar values), as Python's `str` indices do.

use serde::{Deserialize, Serialize};
use wasmserve_plugin::classify::softmax;
use wasmserve_plugin::text::Tokenizer;
use wasmserve_plugin::text::tokenizers::{Decoder, Encoding, Model, ModelWrapper};

/// How labelled tokens become entities (`[text] aggregation`, or the request's `aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    None,
    Simple,
    First,
    Average,
    Max,
}

impl Aggregation {
    /// A request parameter's value.
    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(value.to_string())).ok()
    }
}

/// One entity as the pipeline answers it: a token (`none`) or a group.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Entity {
    Token { entity: String, score: f32, index: usize, word: String, start: usize, end: usize },
    Group { entity_group: String, score: f32, word: String, start: usize, end: usize },
}

/// A token of the text with every label's probability.
struct Token {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A token or a word with one label.
struct Labelled {
    entity: String,
    score: f32,
    word: String,
    start: usize,
    end: usize,
    index: usize,
}

/// The entities of `text`, whose encoding (character offsets) is `encoding` and whose logits
/// are `logits` (one row of `labels.len()` per token).
pub fn entities(
    tokenizer: &Tokenizer,
    text: &str,
    encoding: &Encoding,
    logits: &[f32],
    labels: &[String],
    aggregation: Aggregation,
) -> Vec<Entity> {
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"));
    let tokens = tokens(tokenizer, text, encoding, logits, labels.len().max(1));
    let decode = |words: Vec<String>| match tokenizer.get_decoder() {
        Some(decoder) => decoder.decode(words.clone()).unwrap_or_else(|_| words.join(" ")),
        None => words.join(" "),
    };
    let labelled: Vec<Labelled> = match aggregation {
        Aggregation::None | Aggregation::Simple => tokens
            .into_iter()
            .map(|t| {
                let (i, score) = best(&t.scores);
                Labelled { entity: label(i), score, word: t.word, start: t.start, end: t.end, index: t.index }
            })
            .collect(),
        _ => words(tokens)
            .into_iter()
            .map(|word| {
                let scores = match aggregation {
                    Aggregation::First => word[0].scores.clone(),
                    Aggregation::Max => {
                        // The first of the most confident tokens (Python's `max` keeps the first).
                        let top = |t: &Token| t.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut most = &word[0];
                        for t in &word[1..] {
                            if top(t) > top(most) {
                                most = t;
                            }
                        }
                        most.scores.clone()
                    }
                    _ => {
                        let n = word.len() as f32;
                        (0..word[0].scores.len())
                            .map(|l| word.iter().map(|t| t.scores[l]).sum::<f32>() / n)
                            .collect()
                    }
                };
                let (i, score) = best(&scores);
                Labelled {
                    entity: label(i),
                    score,
                    word: decode(word.iter().map(|t| t.word.clone()).collect()),
                    start: word[0].start,
                    end: word[word.len() - 1].end,
                    index: word[0].index,
                }
            })
            .collect(),
    };
    if aggregation == Aggregation::None {
        return labelled
            .into_iter()
            .filter(|t| t.entity != "O")
            .map(|t| Entity::Token {
                entity: t.entity,
                score: t.score,
                index: t.index,
                word: t.word,
                start: t.start,
                end: t.end,
            })
            .collect();
    }
    groups(labelled)
        .into_iter()
        .map(|group| {
            let first = &group[0];
            Entity::Group {
                entity_group: first.entity.rsplit('-').next().unwrap_or_default().to_string(),
                score: group.iter().map(|t| t.score).sum::<f32>() / group.len() as f32,
                word: decode(group.iter().map(|t| t.word.clone()).collect()),
                start: first.start,
                end: group[group.len() - 1].end,
            }
        })
        .filter(|e| !matches!(e, Entity::Group { entity_group, .. } if entity_group == "O"))
        .collect()
}

/// The index and probability of the most probable label (the first of equals).
fn best(scores: &[f32]) -> (usize, f32) {
    wasmserve_plugin::classify::argmax(scores).unwrap_or((0, f32::NAN))
}

/// The text's tokens, special ones left out, with their labels' probabilities and whether
/// each continues the word before it.
fn tokens(
    tokenizer: &Tokenizer,
    text: &str,
    encoding: &Encoding,
    logits: &[f32],
    width: usize,
) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    // A tokenizer that marks a word's later pieces (WordPiece's `##`) tells words apart
    // exactly; others are guessed from the space before a token.
    let model = tokenizer.get_model();
    let (prefix, unk) = match model {
        ModelWrapper::WordPiece(m) => (Some(m.continuing_subword_prefix.clone()), Some(m.unk_token.clone())),
        ModelWrapper::BPE(m) => (m.continuing_subword_prefix.clone(), m.unk_token.clone()),
        ModelWrapper::WordLevel(m) => (None, Some(m.unk_token.clone())),
        // A Unigram model's unknown token is "<unk>" as a rule (its id is not public).
        _ => (None, Some("<unk>".to_string())),
    };
    let prefix = prefix.filter(|p| !p.is_empty());
    let unk = unk.and_then(|u| model.token_to_id(&u));
    let mut tokens = Vec::new();
    for (index, ((word, &(start, end)), (&special, &id))) in encoding
        .get_tokens()
        .iter()
        .zip(encoding.get_offsets())
        .zip(encoding.get_special_tokens_mask().iter().zip(encoding.get_ids()))
        .enumerate()
    {
        let Some(row) = logits.get(index * width..(index + 1) * width) else { break };
        if special != 0 {
            continue;
        }
        let reference: String = chars.get(start..end.min(chars.len())).unwrap_or_default().iter().collect();
        let (word, is_subword) = if Some(id) == unk {
            (reference, false)
        } else if prefix.is_some() {
            let is_subword = word.chars().count() != reference.chars().count();
            (word.clone(), is_subword)
        } else {
            (word.clone(), start > 0 && chars.get(start - 1) != Some(&' '))
        };
        tokens.push(Token { word, scores: softmax(row), start, end, index, is_subword });
    }
    tokens
}

/// Tokens grouped into words: a token that continues a word joins it.
fn words(tokens: Vec<Token>) -> Vec<Vec<Token>> {
    let mut words: Vec<Vec<Token>> = Vec::new();
    for token in tokens {
        match words.last_mut() {
            Some(word) if token.is_subword => word.push(token),
            _ => words.push(vec![token]),
        }
    }
    words
}

/// `B-PER` is ("B", "PER"); `I-PER` and `PER` are ("I", "PER").
fn tag(label: &str) -> (bool, &str) {
    match label.strip_prefix("B-") {
        Some(tag) => (true, tag),
        None => (false, label.strip_prefix("I-").unwrap_or(label)),
    }
}

/// Adjacent tokens (or words) of one type joined; `B-` starts a new group.
fn groups(labelled: Vec<Labelled>) -> Vec<Vec<Labelled>> {
    let mut groups: Vec<Vec<Labelled>> = Vec::new();
    for t in labelled {
        let joins = groups.last().and_then(|g| g.last()).is_some_and(|last| {
            let ((begins, kind), (_, last_kind)) = (tag(&t.entity), tag(&last.entity));
            kind == last_kind && !begins
        });
        match groups.last_mut() {
            Some(group) if joins => group.push(t),
            _ => groups.push(vec![t]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(entity: &str, word: &str, start: usize) -> Labelled {
        Labelled {
            entity: entity.into(),
            score: 0.5,
            word: word.into(),
            start,
            end: start + word.len(),
            index: start,
        }
    }

    #[test]
    fn tags_group_as_the_pipeline_groups_them() {
        let g = groups(vec![
            labelled("B-PER", "ada", 0),
            labelled("I-PER", "love", 4),
            labelled("B-PER", "alan", 9),
            labelled("O", "and", 14),
            labelled("O", "x", 18),
            labelled("LOC", "paris", 20),
            labelled("I-LOC", "france", 26),
        ]);
        let sizes: Vec<usize> = g.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1, 2, 2], "B- starts a group; O and bare labels join as I-");
    }
}
