//! PNG plots with plotters (fonts: Debian's DejaVu Sans, registered from its file).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::scale::MemorySample;
use crate::stats::Latency;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let bytes =
        std::fs::read(FONT).with_context(|| format!("{FONT} (Debian's fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    Ok(())
}

/// The series' legend, boxed, at `position`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The distribution of handoff latency per system: the fraction of handoffs at most x ms,
/// on a logarithmic x axis.
pub fn handoffs(path: &Path, systems: &[(&str, &Latency)]) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let low = systems
        .iter()
        .filter_map(|(_, l)| l.sorted_ms.first())
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let high = systems
        .iter()
        .filter_map(|(_, l)| l.sorted_ms.last())
        .cloned()
        .fold(0.0, f64::max)
        .max(low * 10.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Handoff latency (release → next holder knows), one contended Mutex",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of handoffs ≤ x")
        .label_style(("sans-serif", 14))
        .draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK];
    for (i, (name, latency)) in systems.iter().enumerate() {
        let n = latency.sorted_ms.len() as f64;
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                latency
                    .sorted_ms
                    .iter()
                    .enumerate()
                    .map(|(k, ms)| (ms.max(low), (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(format!(
                "{name}: p50 {:.2} ms, p99 {:.2} ms",
                latency.p50_ms, latency.p99_ms
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// One process's memory in a sample.
type MemoryOf = fn(&MemorySample) -> f64;

/// Resident memory of the controller, kube-apiserver and etcd as waiting claims are made.
pub fn memory(path: &Path, samples: &[MemorySample]) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let claims = samples.iter().map(|s| s.claims).max().unwrap_or(1).max(1);
    let series: [(&str, RGBColor, MemoryOf); 3] = [
        ("lockkeeper controller", BLUE, |s| s.controller_mib),
        ("kube-apiserver", RED, |s| s.apiserver_mib),
        ("etcd", GREEN, |s| s.etcd_mib),
    ];
    let top = samples
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, of)| of(s)))
        .fold(0.0, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Resident memory as waiting claims are made",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0..claims, 0.0..top * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("claims made")
        .y_desc("resident memory, MiB")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, color, of) in series {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.claims, of(s))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            samples
                .iter()
                .map(|s| Circle::new((s.claims, of(s)), 3, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// The controller's API writes per claim, one bar per resource.
pub fn writes_per_claim(path: &Path, by_resource: &[(String, f64)]) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = by_resource
        .iter()
        .map(|(_, n)| *n)
        .fold(0.0, f64::max)
        .max(1.0);
    let total: f64 = by_resource.iter().map(|(_, n)| n).sum();
    let names: Vec<String> = by_resource.iter().map(|(r, _)| r.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("lockkeeper's API writes per claim lifecycle, by resource ({total:.2} in all)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        // A segmented range a..b has a segment for b too: end it at the last bar.
        .build_cartesian_2d((0..names.len().max(2) - 1).into_segmented(), 0.0..top * 1.2)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("writes per claim")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(BLUE.mix(0.7).filled())
            .margin(30)
            .data(by_resource.iter().enumerate().map(|(i, (_, n))| (i, *n))),
    )?;
    root.present()?;
    Ok(())
}
