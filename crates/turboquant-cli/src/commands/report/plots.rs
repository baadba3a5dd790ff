//! The charts of a report, drawn as SVG with plotters (and rendered to PNG by resvg).

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

/// A named series of (x, y) points; `line` joins them.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub line: bool,
}

/// One chart: axes, series, and optional labels at points.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// (x, y, text) labels drawn next to points.
    pub labels: Vec<(f64, f64, String)>,
    /// A Pareto front to draw as a dashed line (lower-left is better).
    pub front: Vec<(f64, f64)>,
    pub legend: Legend,
}

const WIDTH: u32 = 860;
const HEIGHT: u32 = 520;

/// Colours for series (the "tab20" palette), fixed in order so the same input gives the same
/// picture.
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

/// Where the legend goes: a corner the data leave free.
#[derive(Clone, Copy)]
pub enum Legend {
    UpperRight,
    LowerRight,
    UpperLeft,
}

fn range(values: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if log {
        let lo = lo.max(1e-6);
        (lo / 1.6, hi.max(lo) * 1.6)
    } else {
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-9);
        (lo - pad, hi + pad)
    }
}

/// Draws `chart` and returns the SVG text.
pub fn svg(chart: &Chart) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let all = chart.series.iter().flat_map(|s| s.points.iter().copied());
        let (x0, x1) = range(all.clone().map(|p| p.0), chart.x_log);
        let (y0, y1) = range(all.map(|p| p.1), chart.y_log);
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&chart.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70);
        macro_rules! draw {
            ($ctx:expr) => {{
                let mut ctx = $ctx;
                ctx.configure_mesh()
                    .x_desc(&chart.x_label)
                    .y_desc(&chart.y_label)
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| anyhow!("{e}"))?;
                if !chart.front.is_empty() {
                    ctx.draw_series(DashedLineSeries::new(
                        chart.front.iter().copied(),
                        6,
                        4,
                        BLACK.stroke_width(1),
                    ))
                    .map_err(|e| anyhow!("{e}"))?
                    .label("Pareto front")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
                }
                for (i, s) in chart.series.iter().enumerate() {
                    let colour = PALETTE[i % PALETTE.len()];
                    if s.line {
                        ctx.draw_series(LineSeries::new(
                            s.points.iter().copied(),
                            colour.stroke_width(2),
                        ))
                        .map_err(|e| anyhow!("{e}"))?;
                    }
                    ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                        .map_err(|e| anyhow!("{e}"))?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
                }
                ctx.draw_series(chart.labels.iter().map(|(x, y, t)| {
                    Text::new(
                        t.clone(),
                        (*x, *y),
                        ("sans-serif", 12).into_font().color(&BLACK),
                    )
                }))
                .map_err(|e| anyhow!("{e}"))?;
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .position(match chart.legend {
                        Legend::UpperRight => SeriesLabelPosition::UpperRight,
                        Legend::LowerRight => SeriesLabelPosition::LowerRight,
                        Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                    })
                    .draw()
                    .map_err(|e| anyhow!("{e}"))?;
            }};
        }
        match (chart.x_log, chart.y_log) {
            (false, false) => draw!(builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| anyhow!("{e}"))?),
            (false, true) => draw!(builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| anyhow!("{e}"))?),
            (true, false) => draw!(builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(|e| anyhow!("{e}"))?),
            (true, true) => draw!(builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(|e| anyhow!("{e}"))?),
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

/// Renders SVG text to PNG bytes (with the system's fonts for the text).
pub fn png(svg: &str) -> Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // the charts ask for "sans-serif": point it at a sans face this system has
    let installed: Vec<String> = fonts
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    if let Some(family) = [
        "DejaVu Sans",
        "Liberation Sans",
        "Noto Sans",
        "Arial",
        "Helvetica",
    ]
    .iter()
    .find(|f| installed.iter().any(|i| i == *f))
    {
        fonts.set_sans_serif_family(*family);
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).context("parse the chart's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("allocate the PNG")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("encode the PNG")
}

/// The points of the lower-left Pareto front (minimise both x and y), in x order.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|last| p.1 < last.1) {
            front.push(p);
        }
    }
    front
}

/// Groups (key, x, y) triples into series named by key, in key order.
pub fn group(points: impl IntoIterator<Item = (String, f64, f64)>, line: bool) -> Vec<Series> {
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (k, x, y) in points {
        by.entry(k).or_default().push((x, y));
    }
    by.into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name, points, line }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_the_undominated_points() {
        let front = pareto_front(&[
            (4.5, 0.05),
            (4.25, 0.03),
            (8.5, 0.004),
            (3.25, 0.1),
            (5.0, 0.2),
        ]);
        assert_eq!(front, vec![(3.25, 0.1), (4.25, 0.03), (8.5, 0.004)]);
    }

    #[test]
    fn same_chart_same_bytes() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_log: false,
            y_log: true,
            series: vec![Series {
                name: "a".into(),
                points: vec![(1.0, 0.1), (2.0, 0.01)],
                line: true,
            }],
            labels: vec![(1.0, 0.1, "a".into())],
            front: vec![],
            legend: Legend::UpperRight,
        };
        let a = svg(&chart).unwrap();
        assert_eq!(a, svg(&chart).unwrap());
        assert!(a.starts_with("<svg") && a.contains("<text"), "{a}");
    }
}
