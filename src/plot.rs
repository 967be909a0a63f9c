//! The report's pictures, drawn with plotters into memory and saved as PNG
//! with `image`: positional-bias heatmaps and a contact sheet of hard
//! images. Text uses DejaVu Sans embedded in the binary, so a PNG renders
//! the same on a machine without fonts.

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {file}: {message}")]
    Draw { file: String, message: String },
    #[error("writing {file}: {message}")]
    Save { file: String, message: String },
}

const FONT: &str = "sans-serif";

fn font_ready() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The font is embedded and valid; a failure would leave text empty, not crash.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

const GREY: RGBColor = RGBColor(80, 80, 80);

fn text(size: u32, color: &'static RGBColor, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
        .color(color)
        .pos(pos)
}

/// Draw with `f` into a white `w x h` RGB canvas and save it as PNG.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    f: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    font_ready();
    let file = path.display().to_string();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        f(&root).map_err(|message| PlotError::Draw {
            file: file.clone(),
            message,
        })?;
        root.present().map_err(|e| PlotError::Draw {
            file: file.clone(),
            message: e.to_string(),
        })?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| PlotError::Draw {
        file: file.clone(),
        message: "canvas size mismatch".into(),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PlotError::Save {
            file: file.clone(),
            message: e.to_string(),
        })?;
    }
    img.save(path).map_err(|e| PlotError::Save {
        file,
        message: e.to_string(),
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Width in pixels of `s` drawn at `size`.
fn text_width(s: &str, size: u32) -> u32 {
    font_ready();
    (FONT, size)
        .into_font()
        .box_size(s)
        .map(|(w, _)| w)
        .unwrap_or(u32::MAX)
}

/// `s` broken at spaces into lines that each fit `max_width` pixels at
/// `size`, at most `max_lines` of them; a word too long for a line, or text
/// left over after the last line, is cut and ends in "…".
pub(crate) fn fit_lines(s: &str, size: u32, max_width: u32, max_lines: usize) -> Vec<String> {
    let fits = |t: &str| text_width(t, size) <= max_width;
    // The longest prefix of `t` (in characters) that fits with "…" after it.
    let cut = |t: &str| -> String {
        let chars: Vec<char> = t.chars().collect();
        let mut n = chars.len();
        loop {
            let candidate: String = chars[..n].iter().collect::<String>() + "…";
            if n == 0 || fits(&candidate) {
                return candidate;
            }
            n -= 1;
        }
    };
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in s.split_whitespace() {
        let joined = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
        };
        if fits(&joined) {
            current = joined;
            continue;
        }
        if !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        current = if fits(word) {
            word.to_string()
        } else {
            cut(word)
        };
    }
    if !current.is_empty() {
        lines.push(current);
    }
    if lines.len() > max_lines.max(1) {
        let rest = lines[max_lines.max(1) - 1..].join(" ");
        lines.truncate(max_lines.max(1) - 1);
        lines.push(cut(&rest));
    }
    lines
}

/// Draw `lines` left-aligned from `(x, y)`, one every `step` pixels.
fn draw_lines(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    lines: &[String],
    (x, y): (i32, i32),
    step: i32,
    style: &TextStyle<'static>,
) -> Result<(), String> {
    for (k, line) in lines.iter().enumerate() {
        root.draw(&Text::new(
            line.clone(),
            (x, y + step * k as i32),
            style.clone(),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// White to dark blue; `t` in 0..=1.
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// A positional-bias heatmap: `bounds[row][col]` (row 0 = top) as a
/// coloured grid, each cell annotated with its value in percent, its
/// difference to the centre cell, and how often its anchor was among the
/// greedy picks.
pub(crate) fn bias_heatmap(
    path: &Path,
    title: &str,
    subtitle: &str,
    bounds: &[Vec<f64>],
    picks: &[Vec<usize>],
    n_picks: usize,
) -> Result<(), PlotError> {
    let n = bounds.len().max(1);
    let cell = 150u32;
    let width = cell * n as u32 + 40;
    // Titles wrap to the picture's width; the grid starts below them.
    let title_lines = fit_lines(title, 20, width - 40, 3);
    let subtitle_lines = fit_lines(subtitle, 14, width - 40, 4);
    let top = 16 + 26 * title_lines.len() as u32 + 18 * subtitle_lines.len() as u32 + 10;
    let size = (width, cell * n as u32 + top + 40);
    let centre = bounds
        .get(n / 2)
        .and_then(|r| r.get(n / 2))
        .copied()
        .unwrap_or(0.0);
    let (lo, hi) = bounds
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    render(path, size, |root| {
        root.fill(&WHITE).map_err(err)?;
        let left = Pos::new(HPos::Left, VPos::Top);
        draw_lines(root, &title_lines, (20, 12), 26, &text(20, &BLACK, left))?;
        let below = 12 + 26 * title_lines.len() as i32 + 2;
        draw_lines(
            root,
            &subtitle_lines,
            (20, below),
            18,
            &text(14, &GREY, left),
        )?;
        let centred = Pos::new(HPos::Center, VPos::Center);
        for (r, row) in bounds.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let x0 = 20 + c as i32 * cell as i32;
                let y0 = top as i32 + r as i32 * cell as i32;
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                let fill = shade(0.15 + 0.75 * t);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32 - 2, y0 + cell as i32 - 2)],
                    fill.filled(),
                ))
                .map_err(err)?;
                let ink: &'static RGBColor = if t > 0.55 { &WHITE } else { &BLACK };
                let mid = (x0 + cell as i32 / 2, y0 + cell as i32 / 2);
                root.draw(&Text::new(
                    format!("{:.1}%", 100.0 * v),
                    (mid.0, mid.1 - 28),
                    text(24, ink, centred),
                ))
                .map_err(err)?;
                let diff = if r == n / 2 && c == n / 2 {
                    "centre".to_string()
                } else {
                    format!("{:+.1} vs centre", 100.0 * (v - centre))
                };
                root.draw(&Text::new(diff, (mid.0, mid.1 + 6), text(15, ink, centred)))
                    .map_err(err)?;
                let count = picks.get(r).and_then(|p| p.get(c)).copied().unwrap_or(0);
                root.draw(&Text::new(
                    format!("{count} of {n_picks} picks"),
                    (mid.0, mid.1 + 32),
                    text(14, ink, centred),
                ))
                .map_err(err)?;
            }
        }
        Ok(())
    })
}

/// `img` scaled to fit in 160 x 160, keeping its aspect; small images stay as they are.
pub(crate) fn thumbnail(img: &image::RgbImage) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let s = 160.0 / w.max(h).max(1) as f64;
    if s >= 1.0 {
        return img.clone();
    }
    let (tw, th) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    image::imageops::thumbnail(img, tw, th)
}

/// A grid of thumbnails with a caption under each.
pub(crate) fn contact_sheet(
    path: &Path,
    title: &str,
    tiles: &[(RgbImage, String)],
) -> Result<(), PlotError> {
    let cols = tiles.len().clamp(1, 6) as u32;
    let rows = (tiles.len() as u32).div_ceil(cols).max(1);
    let (tile, caption) = (160u32, 40u32);
    let width = cols * (tile + 10) + 10;
    let title_lines = fit_lines(title, 18, width - 20, 3);
    let top = 20 + 24 * title_lines.len() as u32;
    let size = (width, top + rows * (tile + caption) + 10);
    render(path, size, |root| {
        root.fill(&WHITE).map_err(err)?;
        let left = Pos::new(HPos::Left, VPos::Top);
        draw_lines(root, &title_lines, (10, 12), 24, &text(18, &BLACK, left))?;
        for (i, (img, label)) in tiles.iter().enumerate() {
            let (c, r) = (i as u32 % cols, i as u32 / cols);
            let x = (10 + c * (tile + 10)) as i32;
            let y = (top + r * (tile + caption)) as i32;
            // Centre the thumbnail in its square.
            let dx = (tile.saturating_sub(img.width()) / 2) as i32;
            let dy = (tile.saturating_sub(img.height()) / 2) as i32;
            let element = BitMapElement::<(i32, i32)>::with_owned_buffer(
                (x + dx, y + dy),
                (img.width(), img.height()),
                img.as_raw().clone(),
            )
            .ok_or("thumbnail buffer size mismatch")?;
            root.draw(&element).map_err(err)?;
            // Two caption lines, each cut to the tile's width.
            let lines: Vec<String> = label
                .lines()
                .take(2)
                .flat_map(|l| fit_lines(l, 13, tile, 1))
                .collect();
            draw_lines(
                root,
                &lines,
                (x, y + tile as i32 + 4),
                16,
                &text(13, &BLACK, left),
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_draws_text_and_colour_into_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bias.png");
        let bounds = vec![
            vec![0.2, 0.25, 0.21],
            vec![0.3, 0.465, 0.28],
            vec![0.22, 0.24, 0.2],
        ];
        let picks = vec![vec![1, 2, 1], vec![3, 12, 3], vec![1, 2, 1]];
        bias_heatmap(
            &path,
            "resnet50 on imagenet-a",
            "per-anchor upper bound",
            &bounds,
            &picks,
            26,
        )
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (490, 560));
        // The centre cell (the maximum) is the darkest blue; a corner is pale.
        let centre = img.get_pixel(20 + 150 + 10, 70 + 150 + 10);
        let corner = img.get_pixel(20 + 10, 70 + 10);
        assert!(centre[2] > centre[0] + 60, "{centre:?}");
        assert!(corner[0] > centre[0] + 100, "{corner:?} vs {centre:?}");
        // Text was rendered: the title row holds dark pixels.
        let dark = (20..300)
            .flat_map(|x| (12..32).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 100)
            .count();
        assert!(dark > 50, "no title text drawn ({dark} dark pixels)");
    }

    /// Dark pixels in columns `[x0, x1)` of rows `[y0, y1)`.
    fn ink(img: &RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
        (x0..x1)
            .flat_map(|x| (y0..y1).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 160)
            .count()
    }

    #[test]
    fn long_titles_wrap_inside_the_picture() {
        let long = "convnext_base.fb_in1k_with_an_unusually_long_model_name on imagenet-c/impulse_noise/3 \
                    and a subtitle that goes on: per-anchor upper bound (rows top to bottom) over 36 scales";
        for line in fit_lines(long, 14, 200, 4) {
            assert!(text_width(&line, 14) <= 200, "{line}");
        }
        let cut = fit_lines(long, 14, 200, 2);
        assert_eq!(cut.len(), 2);
        assert!(cut[1].ends_with('…'), "{cut:?}");
        assert_eq!(fit_lines("short", 14, 200, 2), ["short"]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bias.png");
        let bounds = vec![vec![0.5; 3]; 3];
        let picks = vec![vec![1; 3]; 3];
        bias_heatmap(&path, long, long, &bounds, &picks, 9).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        // Text reaches across the title band but never into the right margin.
        let band = (0, h - 490);
        assert!(ink(&img, (20, w / 2), band) > 200, "titles drawn");
        assert_eq!(
            ink(&img, (w - 12, w), band),
            0,
            "a title runs off the right edge"
        );
        // The grid starts below the wrapped titles.
        assert!(h > 560, "{h}");

        let sheet = dir.path().join("sheet.png");
        let tile = RgbImage::from_pixel(100, 80, image::Rgb([200, 0, 0]));
        let tiles = vec![(tile, format!("{long}\n{long}"))];
        contact_sheet(&sheet, long, &tiles).unwrap();
        let img = image::open(&sheet).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        assert_eq!(
            ink(&img, (w - 8, w), (0, h)),
            0,
            "text runs off the right edge"
        );
    }

    #[test]
    fn contact_sheet_places_thumbnails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sheet.png");
        let red = RgbImage::from_pixel(100, 80, image::Rgb([200, 0, 0]));
        let tiles = vec![(red.clone(), "a\nb".to_string()), (red, "c".into())];
        contact_sheet(&path, "hard images", &tiles).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * 170 + 10, 44 + 200 + 10));
        assert_eq!(img.get_pixel(10 + 80, 44 + 80), &image::Rgb([200, 0, 0]));
        assert_eq!(img.get_pixel(180 + 80, 44 + 80), &image::Rgb([200, 0, 0]));
    }
}
