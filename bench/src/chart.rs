//! The PNG: cumulative distribution of handoff latency per recipe, log x.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::handoff::Series;

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x9e, 0xda, 0xe5),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
];

pub fn handoff_cdf(series: &[&Series], title: &str, path: &Path) -> Result<(), String> {
    // The font ships inside the binary (the dejavu crate), so the chart
    // renders the same on a machine without fontconfig.
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .collect();
    if all.is_empty() {
        return Err("no samples".into());
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let x_lo = 10f64.powf(lo.log10().floor());
    let x_hi = 10f64.powf(hi.log10().ceil());

    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("latency: release sent -> waiter holds the lock (µs, log scale)")
        .y_desc("fraction of trials")
        .x_label_formatter(&|x| {
            if *x >= 1_000_000.0 {
                format!("{}s", x / 1_000_000.0)
            } else if *x >= 1000.0 {
                format!("{}ms", x / 1000.0)
            } else {
                format!("{x}µs")
            }
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let mut v = s.samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len() as f64;
        let mut points = Vec::with_capacity(v.len() * 2 + 1);
        points.push((v.first().copied().unwrap_or(x_lo).max(x_lo), 0.0));
        for (k, x) in v.iter().enumerate() {
            let x = x.max(x_lo);
            points.push((x, k as f64 / n));
            points.push((x, (k + 1) as f64 / n));
        }
        let color = COLORS[i % COLORS.len()];
        let p50 = crate::stats::percentile(&s.samples, 50.0);
        let p99 = crate::stats::percentile(&s.samples, 99.0);
        let label = format!(
            "{} (n={}, p50 {}, p99 {})",
            s.short,
            s.samples.len(),
            crate::stats::fmt_us(p50),
            crate::stats::fmt_us(p99)
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
