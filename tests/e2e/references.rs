//! The examples' answers against their references: magika's labels, minilm's embeddings.

use super::*;

#[test]
fn magika_labels_match_the_python_package() {
    let server = Server::start(&examples(), &[]);
    let expected = read_json(&fixture("magika/expected.json"));
    let expected = expected.as_object().unwrap();
    assert!(expected.len() >= 12, "need at least 12 sample files");
    let mut mismatches = Vec::new();
    for (name, want) in expected {
        let bytes = std::fs::read(fixture("magika/files").join(name)).unwrap();
        let (label, score) = identify(&server, &bytes);
        let want_score = want["score"].as_f64().unwrap() as f32;
        if label != want["label"] || (score - want_score).abs() > 0.01 {
            mismatches.push(format!("{name}: got {label} {score:.4}, python magika says {want}"));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // Several files in one request, through the binary tensor extension.
    let r = identify_many(&server, &["doc.pdf", "main.rs", "photo.jpg"], json!([{"name": "label"}]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"].as_array().unwrap().len(), 1, "only the requested output");
    assert_eq!(r.output("label")["data"], json!(["pdf", "rust", "jpeg"]));
}

#[test]
fn minilm_embeddings_match_the_reference() {
    let server = Server::start(&examples(), &[]);
    let expected = read_json(&fixture("minilm/expected.json"));
    let sentences: Vec<&str> =
        expected["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let got = embed(&server, &sentences, json!({}));
    for (i, (row, want)) in got.iter().zip(expected["embeddings"].as_array().unwrap()).enumerate() {
        let c = cosine(row, &f32s(want));
        assert!(c >= 0.999, "sentence {i} ({:?}): cosine {c} with the reference", sentences[i]);
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i} is not L2-normalised: {norm}");
    }
    assert!(cosine(&got[0], &got[1]) > cosine(&got[0], &got[2]) + 0.3, "similar pair must score higher");
    // One at a time (no padding) gives the same vectors as the padded batch.
    let alone = embed(&server, &sentences[2..3], json!({}));
    assert!(cosine(&alone[0], &got[2]) > 0.9999);
    // Request parameters reach the plugin.
    let raw = embed(&server, &sentences[..1], json!({"normalize": false}));
    let norm = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "normalize=false must skip normalisation (norm {norm})");
}
