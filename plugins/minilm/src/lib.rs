//! minilm: sentence embeddings with all-MiniLM-L6-v2.
//!
//! Pre-processing is BERT's uncased tokeniser, written out here rather than taken from the
//! SDK's `text` feature (Hugging Face `tokenizers`): that gives the same ids but makes this
//! plugin 1.7 MB instead of 0.3, too big for the Kubernetes ConfigMap deploy/ ships it in.
//! The tokeniser cleans the text, splits CJK characters, lowercases, strips accents, splits
//! punctuation, then runs greedy longest-match WordPiece over `/data/vocab.txt`, truncated to
//! 256 tokens as sentence-transformers does. Post-processing is mean pooling over
//! the attention mask followed by L2 normalisation.
//!
//! Input `text`: BYTES [N] (UTF-8 sentences). Output `embedding`: FP32 [N, 384].
//! Request parameter `normalize=false` skips the L2 normalisation.

use std::collections::HashMap;
use unicode_general_category::{GeneralCategory as Gc, get_general_category};
use unicode_normalization::UnicodeNormalization;
use wasmserve_plugin::warm::{Guest, WarmUp};
use wasmserve_plugin::{
    DataFile, OrError, Params, PluginError, Prepared, Tensor, find, internal, invalid, param,
};

/// sentence-transformers' `max_seq_length` for this model.
const MAX_TOKENS: usize = 256;
/// BERT's WordPiece gives up on words longer than this.
const MAX_WORD_CHARS: usize = 100;

/// The WordPiece vocabulary, one token per line, its line number the token's id.
static VOCAB: DataFile<Vocab> = DataFile::new("vocab.txt", Vocab::parse);

struct Vocab {
    ids: HashMap<&'static str, i64>,
    unk: i64,
    cls: i64,
    sep: i64,
}

impl Vocab {
    fn parse(bytes: Vec<u8>) -> Result<Self, PluginError> {
        let text = String::from_utf8(bytes).or_internal("UTF-8")?;
        // Kept for the instance's lifetime: the map borrows its tokens instead of copying them.
        let text: &'static str = String::leak(text);
        let mut ids = HashMap::with_capacity(32 << 10);
        ids.extend(text.lines().enumerate().map(|(i, t)| (t, i as i64)));
        let id = |t: &str| ids.get(t).copied().or_internal(&format!("the vocabulary lacks {t}"));
        Ok(Self { unk: id("[UNK]")?, cls: id("[CLS]")?, sep: id("[SEP]")?, ids })
    }

    /// Greedy longest-match-first WordPiece of one word.
    fn word_pieces(&self, word: &str, out: &mut Vec<i64>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, "##");
                }
                if let Some(&id) = self.ids.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }

    /// `[CLS] tokens [SEP]`, truncated to `MAX_TOKENS`.
    fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.cls];
        for word in basic_tokens(text) {
            self.word_pieces(&word, &mut ids);
        }
        ids.truncate(MAX_TOKENS - 1);
        ids.push(self.sep);
        ids
    }
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r')
        && matches!(
            get_general_category(c),
            Gc::Control | Gc::Format | Gc::Unassigned | Gc::PrivateUse | Gc::Surrogate
        )
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || get_general_category(c) == Gc::SpaceSeparator
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            Gc::ConnectorPunctuation
                | Gc::DashPunctuation
                | Gc::OpenPunctuation
                | Gc::ClosePunctuation
                | Gc::InitialPunctuation
                | Gc::FinalPunctuation
                | Gc::OtherPunctuation
        )
}

/// The CJK Unified Ideograph blocks BERT splits into single characters.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// BERT's basic tokeniser (uncased): words and punctuation marks, lowercased, accents removed.
fn basic_tokens(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_cjk(c) {
            cleaned.extend([' ', c, ' ']);
        } else if is_whitespace(c) {
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let mut tokens = Vec::new();
    for word in cleaned.split_whitespace() {
        let word: String =
            word.to_lowercase().nfd().filter(|&c| get_general_category(c) != Gc::NonspacingMark).collect();
        let mut current = String::new();
        for c in word.chars() {
            if is_punctuation(c) {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
                tokens.push(c.to_string());
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            tokens.push(current);
        }
    }
    tokens
}

struct MiniLm;

impl Guest for MiniLm {
    fn preprocess(inputs: Vec<Tensor>, _params: Params) -> Result<Prepared, PluginError> {
        let vocab = VOCAB.get()?;
        let sentences = find(&inputs, "text")?.texts()?;
        if sentences.is_empty() {
            return Err(invalid("tensor 'text' holds no sentences"));
        }
        let encoded: Vec<Vec<i64>> = sentences.iter().map(|s| vocab.encode(s)).collect();
        let (n, len) = (encoded.len(), encoded.iter().map(Vec::len).max().unwrap_or(0));
        let mut ids = vec![0i64; n * len];
        let mut mask = vec![0i64; n * len];
        for (row, tokens) in encoded.iter().enumerate() {
            ids[row * len..][..tokens.len()].copy_from_slice(tokens);
            mask[row * len..][..tokens.len()].fill(1);
        }
        let shape = vec![n as i64, len as i64];
        Ok(Prepared {
            graph_inputs: vec![
                Tensor::new("input_ids", shape.clone(), &ids),
                Tensor::new("attention_mask", shape.clone(), &mask),
                Tensor::new("token_type_ids", shape.clone(), &vec![0i64; n * len]),
            ],
            context: vec![Tensor::new("attention_mask", shape, &mask)],
        })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        let hidden = find(&outputs, "last_hidden_state")?;
        let &[n, len, dim] = hidden.shape.as_slice() else {
            return Err(internal(format!(
                "last_hidden_state has shape {:?}, expected [n, len, dim]",
                hidden.shape
            )));
        };
        let (n, len, dim) = (n as usize, len as usize, dim as usize);
        let states = hidden.view::<f32>()?.to_vec();
        let mask = find(&context, "attention_mask")?.view::<i64>()?.to_vec();
        if mask.len() != n * len {
            return Err(internal("hidden states and attention mask disagree in size"));
        }
        let normalize = param(&params, "normalize") != Some("false");
        let mut embeddings = vec![0f32; n * dim];
        let mut tokens = vec![0i64; n];
        for (row, out) in embeddings.chunks_exact_mut(dim).enumerate() {
            for t in 0..len {
                if mask[row * len + t] != 0 {
                    tokens[row] += 1;
                    for (o, s) in out.iter_mut().zip(&states[(row * len + t) * dim..][..dim]) {
                        *o += s;
                    }
                }
            }
            out.iter_mut().for_each(|o| *o /= (tokens[row] as f32).max(1e-9));
            if normalize {
                let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out.iter_mut().for_each(|o| *o /= norm);
            }
        }
        Ok(vec![
            Tensor::new("embedding", [n as i64, dim as i64], &embeddings),
            // Tokens each sentence became, [CLS] and [SEP] included (what `usage` reports
            // on /v1/embeddings).
            Tensor::new("tokens", [n as i64], &tokens),
        ])
    }
}

/// At start-up: the vocabulary must load and tokenise, or the model never becomes ready
/// (rather than failing its first request).
impl WarmUp for MiniLm {
    fn warm_up() -> Result<(), PluginError> {
        let ids = VOCAB.get()?.encode("warm up");
        if ids.len() < 3 {
            return Err(internal(format!("the vocabulary tokenised 'warm up' as {ids:?}")));
        }
        Ok(())
    }
}

wasmserve_plugin::export_plugin_with_warm_up!(MiniLm);
