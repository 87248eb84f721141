//! orientation: is this line of text upright or upside down?
//!
//! PaddleOCR's `ch_ppocr_mobile_v2.0_cls` classifier, pre-processed as RapidOCR does before
//! it: the image (PNG or JPEG) scaled to 48 pixels high keeping its aspect ratio, at most
//! 192 wide, BGR planes normalised to [-1, 1], padded with zeros to 192 columns. The model
//! was trained on single text lines (an OCR detector's crops): a whole page or a photo gives
//! no reliable answer.
//!
//! Input `image`: BYTES [N], one encoded image per element. Outputs: `label` BYTES [N]
//! (`0` upright, `180` upside down) and `score` FP32 [N], the label's probability.

use wasmserve_plugin::classify::argmax;
use wasmserve_plugin::image::{Normalize, decode, fit_height, to_chw};
use wasmserve_plugin::{Guest, OrError, Params, PluginError, Prepared, Tensor, find};

/// The model's input: 3 planes of 48 x 192.
const HEIGHT: u32 = 48;
const WIDTH: u32 = 192;
/// The model's classes, in the order of its outputs.
const LABELS: [&str; 2] = ["0", "180"];

struct Orientation;

impl Guest for Orientation {
    fn preprocess(inputs: Vec<Tensor>, _params: Params) -> Result<Prepared, PluginError> {
        let images = find(&inputs, "image")?.elements()?;
        let mut planes = Vec::with_capacity(images.len() * (3 * HEIGHT * WIDTH) as usize);
        for (i, bytes) in images.iter().enumerate() {
            let image = decode(bytes).map_err(|e| e.context(&format!("image[{i}]")))?;
            planes.extend(to_chw(&fit_height(&image, HEIGHT, WIDTH), WIDTH, &Normalize::PADDLE_OCR));
        }
        let shape = [images.len() as i64, 3, i64::from(HEIGHT), i64::from(WIDTH)];
        Ok(Prepared { graph_inputs: vec![Tensor::new("x", shape, &planes)], context: vec![] })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        _context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        // The graph's one output (its name is an export artefact): [N, 2] probabilities.
        let probabilities = outputs.first().or_internal("the graph returned no output")?;
        let mut labels = Vec::new();
        let mut scores = Vec::new();
        for row in probabilities.view::<f32>()?.rows() {
            let (class, score) = argmax(&row.to_vec()).or_internal("the graph returned no classes")?;
            labels.push(*LABELS.get(class).or_internal("the graph returned more than two classes")?);
            scores.push(score);
        }
        let n = labels.len() as i64;
        Ok(vec![Tensor::bytes("label", [n], &labels), Tensor::new("score", [n], &scores)])
    }
}

wasmserve_plugin::export_plugin!(Orientation);
