//! The lateness histogram of scenario 3 as a PNG (plotters, bitmap backend).

use std::path::Path;

use plotters::prelude::*;

/// Bucket upper bounds in ms; the last bucket takes everything above the one before.
const EDGES: [f64; 12] = [
    1.0,
    2.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    f64::INFINITY,
];
const LABELS: [&str; 12] = [
    "≤1", "≤2", "≤5", "≤10", "≤25", "≤50", "≤100", "≤250", "≤500", "≤1000", "≤2500", ">2500",
];
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Share of handlings (percent) per lateness bucket.
fn shares(late_ms: &[f64]) -> Vec<f64> {
    let mut counts = [0usize; EDGES.len()];
    for l in late_ms {
        let i = EDGES
            .iter()
            .position(|e| *l <= *e)
            .unwrap_or(EDGES.len() - 1);
        counts[i] += 1;
    }
    let total = late_ms.len().max(1) as f64;
    counts.iter().map(|c| *c as f64 * 100.0 / total).collect()
}

/// Draws one group of bars per lateness bucket, one bar per series (name, lateness in ms), to
/// `path`. Text needs a TrueType font; DejaVu Sans is looked up where Debian installs it and
/// the chart is drawn without text when it is missing.
pub fn lateness_histogram(
    path: &Path,
    title: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), String> {
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
    let text = match font {
        Some(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "cannot load the font".to_string())?;
            true
        }
        None => false,
    };
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let data: Vec<Vec<f64>> = series.iter().map(|(_, l)| shares(l)).collect();
    let top = data
        .iter()
        .flatten()
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1.0)
        * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60);
    if text {
        builder.caption(title, ("sans-serif", 20));
    }
    let mut chart = builder
        .build_cartesian_2d(-0.5f64..EDGES.len() as f64 - 0.5, 0f64..top)
        .map_err(|e| e.to_string())?;
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(EDGES.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                match LABELS.get(i.max(0.0) as usize) {
                    Some(label) if (x - i).abs() < 0.01 && i >= 0.0 => label.to_string(),
                    _ => String::new(),
                }
            })
            .x_desc("lateness, ms (handler start − process_after)")
            .y_desc("% of handlings")
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let width = 0.8 / series.len().max(1) as f64;
    for (s, ((name, _), shares)) in series.iter().zip(&data).enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let bars = shares.iter().enumerate().map(move |(i, v)| {
            let x0 = i as f64 - 0.4 + s as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, *v)], colour.filled())
        });
        let drawn = chart.draw_series(bars).map_err(|e| e.to_string())?;
        if text {
            drawn.label(name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
