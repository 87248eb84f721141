//! Pre-processing for text models (Cargo feature `text`): Hugging Face's `tokenizers`, built
//! for WebAssembly, and the padded id, mask and type-id tensors BERT-style graphs take.
//! `tokenizers` is re-exported for everything else (`Tokenizer::from_file("/data/tokenizer.json")`).

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
pub use tokenizers::{self, Tokenizer};
use tokenizers::{Model, TruncationParams, TruncationStrategy};

use crate::{OrError, PluginError, Tensor};

/// BERT's WordPiece tokenizer over a `vocab.txt` (one token per line, its line number its
/// id): text cleaned, CJK characters split, lowercased and accents stripped when
/// `lowercase`, `[CLS] ... [SEP]` around it, truncated to `max_tokens`. What `BertTokenizer`
/// in `transformers` does.
pub fn bert_wordpiece(vocab: &[u8], lowercase: bool, max_tokens: usize) -> Result<Tokenizer, PluginError> {
    let vocab = WordPiece::read_bytes(vocab).or_internal("the vocabulary")?;
    let model = WordPiece::builder().vocab(vocab).build().or_internal("the vocabulary")?;
    let id = |token: &str| model.token_to_id(token).or_internal(&format!("the vocabulary lacks {token}"));
    let (sep, cls) = (id("[SEP]")?, id("[CLS]")?);
    let processor = BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls));
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(processor))
        .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    truncate(&mut tokenizer, max_tokens)?;
    Ok(tokenizer)
}

/// Cut every encoding to `max_tokens`, specials included: a pair loses tokens from its
/// longer text first (what `transformers` does with `truncation=True`).
pub fn truncate(tokenizer: &mut Tokenizer, max_tokens: usize) -> Result<(), PluginError> {
    let params = TruncationParams {
        max_length: max_tokens,
        strategy: TruncationStrategy::LongestFirst,
        ..Default::default()
    };
    tokenizer.with_truncation(Some(params)).or_internal("truncation")?;
    Ok(())
}

/// A batch of encoded texts, padded with 0 to the longest: each `INT64 [n, longest]`.
pub struct Encoded {
    /// Token ids, named `input_ids`.
    pub input_ids: Tensor,
    /// 1 for a token, 0 for padding, named `attention_mask`.
    pub attention_mask: Tensor,
    /// The segment of each token (0 for single texts), named `token_type_ids`.
    pub token_type_ids: Tensor,
}

/// Encode `texts` one by one (no threads in a plugin) and pad them into one batch.
pub fn encode(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Encoded, PluginError> {
    encode_inputs(tokenizer, texts.iter().copied())
}

/// Encode pairs of texts (a cross-encoder's query and document: `[CLS] a [SEP] b [SEP]`,
/// the second text's type ids 1) and pad them into one batch.
pub fn encode_pairs(tokenizer: &Tokenizer, pairs: &[(&str, &str)]) -> Result<Encoded, PluginError> {
    encode_inputs(tokenizer, pairs.iter().copied())
}

/// Encode each input, single text or pair, and pad them into one batch.
fn encode_inputs<'s, E: Into<tokenizers::EncodeInput<'s>>>(
    tokenizer: &Tokenizer,
    inputs: impl Iterator<Item = E>,
) -> Result<Encoded, PluginError> {
    let encodings = inputs
        .map(|input| tokenizer.encode(input, true).or_internal("tokenising"))
        .collect::<Result<Vec<_>, _>>()?;
    let (n, len) = (encodings.len(), encodings.iter().map(|e| e.len()).max().unwrap_or(0));
    let (mut ids, mut mask, mut types) = (vec![0i64; n * len], vec![0i64; n * len], vec![0i64; n * len]);
    for (row, e) in encodings.iter().enumerate() {
        for (i, ((&id, &m), &t)) in
            e.get_ids().iter().zip(e.get_attention_mask()).zip(e.get_type_ids()).enumerate()
        {
            (ids[row * len + i], mask[row * len + i], types[row * len + i]) = (id.into(), m.into(), t.into());
        }
    }
    let shape = [n as i64, len as i64];
    Ok(Encoded {
        input_ids: Tensor::new("input_ids", shape, &ids),
        attention_mask: Tensor::new("attention_mask", shape, &mask),
        token_type_ids: Tensor::new("token_type_ids", shape, &types),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_tokens_are_cleaned_lowercased_split_and_padded() {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "!", "cafe", "##s"].join("\n");
        let tokenizer = bert_wordpiece(vocab.as_bytes(), true, 5).unwrap();
        let encoded = encode(&tokenizer, &["Hello, WORLD!", "Cafés", "hello hello hello hello"]).unwrap();
        assert_eq!(encoded.input_ids.shape, [3, 5]);
        let ids = encoded.input_ids.view::<i64>().unwrap().to_vec();
        // [CLS] hello [UNK](",") world ! -> truncated to 5 with [SEP] kept last.
        assert_eq!(&ids[..5], [2, 4, 1, 5, 3]);
        assert_eq!(&ids[5..10], [2, 7, 8, 3, 0], "accents stripped, '##s' a piece, padded");
        assert_eq!(&ids[10..], [2, 4, 4, 4, 3]);
        let mask = encoded.attention_mask.view::<i64>().unwrap().to_vec();
        assert_eq!(&mask[5..10], [1, 1, 1, 1, 0]);
        assert!(encoded.token_type_ids.view::<i64>().unwrap().iter().all(|t| t == 0));
        assert!(bert_wordpiece(b"[PAD]\n[UNK]", true, 5).is_err(), "no [CLS] or [SEP]");
        let pairs =
            encode_pairs(&tokenizer, &[("hello", "world !"), ("hello", "hello hello hello world")]).unwrap();
        assert_eq!(pairs.input_ids.shape, [2, 5]);
        let ids = pairs.input_ids.view::<i64>().unwrap().to_vec();
        assert_eq!(&ids[..5], [2, 4, 3, 5, 3], "[CLS] a [SEP] b [SEP], '!' truncated away (longest first)");
        let types = pairs.token_type_ids.view::<i64>().unwrap().to_vec();
        assert_eq!(&types[..5], [0, 0, 0, 1, 1]);
    }
}
