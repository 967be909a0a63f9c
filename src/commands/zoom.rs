//! `zoom`: one zoom transform of an image as a PNG: what the model sees.

use anyhow::{Context as _, Result};

use super::context::{parse_transform, read_image};
use crate::cli::ZoomArgs;
use crate::printer::Printer;
use crate::zoom::zoom_view;

pub fn run(args: ZoomArgs, p: Printer) -> Result<()> {
    let ZoomArgs {
        image,
        transform,
        output,
        crop_size,
    } = args;
    let t = parse_transform(&transform)?;
    let img = read_image(&image)?;
    let view = zoom_view(&img, t, 3, crop_size.max(1), 0);
    let buffer = image::RgbImage::from_raw(view.width, view.height, view.data)
        .context("crop buffer has the wrong size")?;
    buffer
        .save_with_format(&output, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", output.display()))?;
    p.note(format_args!(
        "Wrote {} ({t} of {}, {}x{})",
        output.display(),
        image.display(),
        img.width,
        img.height
    ));
    Ok(())
}
