//! page: is this scanned page upright or upside down? An ensemble of two graphs, served as
//! one model, the way RapidOCR chains them:
//!
//! 1. the model's own graph, PaddleOCR's PP-OCRv4 text detector, runs in the host on the page
//!    scaled to 960 pixels on its longer side (BGR, normalised to [-1, 1]);
//! 2. `postprocess` finds the text regions in its probability map (threshold 0.3, connected
//!    regions whose mean probability is at least 0.5, grown by DB's unclip ratio 1.6), cuts
//!    them out of the page, splits long lines into pieces about four times as wide as high,
//!    and runs them through the orientation classifier of model `orientation` (the graph its
//!    config grants in `[plugin] graphs`) through `wasi:nn`;
//! 3. the page is upside down when the pieces' mean probability of 180 degrees is over 0.5.
//!
//! Input `image`: BYTES [1], one PNG or JPEG page per request. Outputs: `label` BYTES [1]
//! (`0`, `180`, or `none` when no text was found), `score` FP32 [1] (the mean probability of
//! the label), `lines` INT32 [1] (text regions found).

use imageproc::region_labelling::{Connectivity, connected_components};
use wasmserve_plugin::image::imageops::crop_imm;
use wasmserve_plugin::image::{GrayImage, Luma, Normalize, RgbImage, decode, fit_height, resize, to_chw};
use wasmserve_plugin::nn::Graph;
use wasmserve_plugin::{Guest, OrError, Params, PluginError, Prepared, Tensor, find, internal, invalid};

/// The detector's input: the longer side, rounded to a multiple of 32 as it needs.
const DETECT_SIDE: u32 = 960;
/// DB post-processing (RapidOCR's settings): pixel threshold, region threshold, growth.
const PIXEL_THRESHOLD: f32 = 0.3;
const REGION_THRESHOLD: f32 = 0.5;
const UNCLIP_RATIO: f32 = 1.6;
/// The classifier's input, and the graph it comes from.
const LINE_HEIGHT: u32 = 48;
const LINE_WIDTH: u32 = 192;
const CLASSIFIER: &str = "orientation";
/// The most line pieces classified per page (the largest regions first).
const MAX_PIECES: usize = 64;

/// A text region in page pixels.
struct Region {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

/// The detector's input size for a page: the longer side `DETECT_SIDE`, both multiples of 32.
fn detect_size(width: u32, height: u32) -> (u32, u32) {
    let scale = DETECT_SIDE as f32 / width.max(height) as f32;
    let side = |s: u32| ((s as f32 * scale / 32.0).round() as u32).max(1) * 32;
    (side(width), side(height))
}

/// Text regions in the detector's probability map (`width` x `height`), scaled to the page.
fn regions(map: &[f32], width: u32, height: u32, page: (u32, u32)) -> Vec<Region> {
    let text = GrayImage::from_fn(width, height, |x, y| {
        Luma([if map[(y * width + x) as usize] > PIXEL_THRESHOLD { 255 } else { 0 }])
    });
    let labels = connected_components(&text, Connectivity::Four, Luma([0]));
    // Per label: x0, y0, x1, y1 (inclusive), probability sum, pixel count.
    let mut found: Vec<(u32, u32, u32, u32, f32, u32)> = Vec::new();
    for (x, y, label) in labels.enumerate_pixels() {
        let Some(i) = (label.0[0] as usize).checked_sub(1) else { continue };
        if i >= found.len() {
            found.resize(i + 1, (u32::MAX, u32::MAX, 0, 0, 0.0, 0));
        }
        let r = &mut found[i];
        *r = (r.0.min(x), r.1.min(y), r.2.max(x), r.3.max(y), r.4 + map[(y * width + x) as usize], r.5 + 1);
    }
    let (sx, sy) = (page.0 as f32 / width as f32, page.1 as f32 / height as f32);
    let mut regions: Vec<Region> = found
        .into_iter()
        .filter(|&(x0, y0, x1, y1, sum, count)| {
            x1 - x0 >= 3 && y1 - y0 >= 3 && sum / count as f32 >= REGION_THRESHOLD
        })
        .map(|(x0, y0, x1, y1, _, _)| {
            // DB shrinks text when it learns it: grow the box back by area * ratio / perimeter.
            let (w, h) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
            let grow = w * h * UNCLIP_RATIO / (2.0 * (w + h));
            let left = ((x0 as f32 - grow) * sx).max(0.0) as u32;
            let top = ((y0 as f32 - grow) * sy).max(0.0) as u32;
            let right = (((x1 as f32 + 1.0 + grow) * sx).ceil() as u32).min(page.0);
            let bottom = (((y1 as f32 + 1.0 + grow) * sy).ceil() as u32).min(page.1);
            Region { x: left, y: top, width: right - left, height: bottom - top }
        })
        .filter(|r| r.width > 0 && r.height > 0)
        .collect();
    regions.sort_by_key(|r| std::cmp::Reverse(r.width * r.height));
    regions
}

/// A region cut into pieces about four times as wide as high: the shape the classifier
/// was trained on (a whole line squeezed into 192 columns reads poorly).
fn pieces(page: &RgbImage, r: &Region) -> Vec<RgbImage> {
    let n = (r.width as f32 / (4 * r.height) as f32).round().max(1.0) as u32;
    (0..n)
        .map(|i| {
            let (left, right) = (r.x + i * r.width / n, r.x + (i + 1) * r.width / n);
            crop_imm(page, left, r.y, right - left, r.height).to_image()
        })
        .collect()
}

struct Page;

impl Guest for Page {
    fn preprocess(inputs: Vec<Tensor>, _params: Params) -> Result<Prepared, PluginError> {
        let pages = find(&inputs, "image")?.elements()?;
        let [page] = pages.as_slice() else {
            return Err(invalid(format!("one page per request: 'image' holds {} elements", pages.len())));
        };
        let page = decode(page).map_err(|e| e.context("image"))?;
        let (width, height) = detect_size(page.width(), page.height());
        let planes = to_chw(&resize(&page, width, height), width, &Normalize::PADDLE_OCR);
        let page_shape = [i64::from(page.height()), i64::from(page.width()), 3];
        Ok(Prepared {
            graph_inputs: vec![Tensor::new("x", [1, 3, i64::from(height), i64::from(width)], &planes)],
            context: vec![Tensor::new::<u8>("page", page_shape, page.as_raw())],
        })
    }

    fn postprocess(
        outputs: Vec<Tensor>,
        context: Vec<Tensor>,
        _params: Params,
    ) -> Result<Vec<Tensor>, PluginError> {
        let map = outputs.first().or_internal("the detector returned no output")?;
        let &[1, 1, height, width] = map.shape.as_slice() else {
            return Err(internal(format!("the detector returned shape {:?}", map.shape)));
        };
        // The decoded page, moved out of the context rather than copied.
        let page = context.into_iter().find(|t| t.name == "page").or_internal("no page in the context")?;
        let (page_height, page_width) = (page.shape[0] as u32, page.shape[1] as u32);
        let page = RgbImage::from_raw(page_width, page_height, page.data).or_internal("page context")?;
        let regions = regions(&map.view::<f32>()?.to_vec(), width as u32, height as u32, page.dimensions());
        let mut planes = Vec::new();
        let mut n = 0;
        for piece in regions.iter().flat_map(|r| pieces(&page, r)).take(MAX_PIECES) {
            planes.extend(to_chw(
                &fit_height(&piece, LINE_HEIGHT, LINE_WIDTH),
                LINE_WIDTH,
                &Normalize::PADDLE_OCR,
            ));
            n += 1;
        }
        let (label, score) = if n == 0 {
            ("none", 0.0)
        } else {
            let x = Tensor::new("x", [n, 3, i64::from(LINE_HEIGHT), i64::from(LINE_WIDTH)], &planes);
            let classified = Graph::load(CLASSIFIER)?.run(&[x])?;
            let probabilities = classified.first().or_internal("the classifier returned no output")?;
            let upside_down =
                probabilities.view::<f32>()?.rows().map(|row| row.get(1)).sum::<f32>() / n as f32;
            if upside_down > 0.5 { ("180", upside_down) } else { ("0", 1.0 - upside_down) }
        };
        Ok(vec![
            Tensor::bytes("label", [1], [label]),
            Tensor::new("score", [1], &[score]),
            Tensor::new("lines", [1], &[regions.len() as i32]),
        ])
    }
}

wasmserve_plugin::export_plugin!(Page);
