//! Line charts: loss, latency and CPU against listeners for the capacity ramp, and the
//! per-second timeline of a run. Each is drawn as a standalone SVG (which browsers and code
//! forges show as is) and rasterised to PNG with resvg, its text set in the system's fonts
//! ([`Fonts`]; without any, the PNG has lines and no text).

use std::fmt::Write as _;

use crate::capacity::CapacityReport;
use crate::report::Report;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];

/// The system's fonts, loaded once for many PNGs.
#[derive(Debug)]
pub struct Fonts(std::sync::Arc<resvg::usvg::fontdb::Database>);

impl Fonts {
    /// Load the fonts installed on this machine.
    pub fn system() -> Fonts {
        let mut db = resvg::usvg::fontdb::Database::new();
        db.load_system_fonts();
        // The charts ask for `sans-serif`, which fontdb maps to Arial: use a family that is
        // installed instead.
        let installed = |family: &str| {
            db.faces()
                .any(|face| face.families.iter().any(|(name, _)| name == family))
        };
        let family = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
            .into_iter()
            .find(|f| installed(f))
            .map(str::to_owned)
            .or_else(|| {
                db.faces()
                    .find_map(|face| face.families.first().map(|(name, _)| name.clone()))
            });
        if let Some(family) = family {
            db.set_sans_serif_family(family);
        }
        Fonts(std::sync::Arc::new(db))
    }
}

/// A chart that could not be rasterised.
#[derive(Debug, thiserror::Error)]
#[error("PNG chart: {0}")]
pub struct PngError(String);

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart with one x and one y axis.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
}

impl Chart {
    /// A chart with listeners on its x axis.
    pub fn against_listeners(title: &str, y_label: &str, series: Vec<Series>) -> Chart {
        Chart {
            title: title.into(),
            x_label: "listeners".into(),
            y_label: y_label.into(),
            series,
        }
    }

    /// The chart as a PNG image, twice the SVG's size.
    pub fn png(&self, fonts: &Fonts) -> Result<Vec<u8>, PngError> {
        let options = resvg::usvg::Options {
            fontdb: fonts.0.clone(),
            ..Default::default()
        };
        let tree = resvg::usvg::Tree::from_str(&self.svg(), &options)
            .map_err(|e| PngError(e.to_string()))?;
        let scale = 2.0;
        let size = tree.size().to_int_size().scale_by(scale);
        let mut pixmap = size
            .and_then(|s| resvg::tiny_skia::Pixmap::new(s.width(), s.height()))
            .ok_or_else(|| PngError("empty image".into()))?;
        pixmap.fill(resvg::tiny_skia::Color::WHITE);
        resvg::render(
            &tree,
            resvg::tiny_skia::Transform::from_scale(scale, scale),
            &mut pixmap.as_mut(),
        );
        pixmap.encode_png().map_err(|e| PngError(e.to_string()))
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
        let mut x_min = f64::INFINITY;
        for &(x, y) in points {
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
        if !x_min.is_finite() || x_max <= x_min {
            x_min = 0.0;
            x_max = x_max.max(1.0);
        }
        let y_max = nice(if y_max > 0.0 { y_max * 1.1 } else { 1.0 });
        let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
        let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
        let sx = |x: f64| MARGIN_LEFT + (x - x_min) / (x_max - x_min) * plot_w;
        let sy = |y: f64| MARGIN_TOP + plot_h - y / y_max * plot_h;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        // Axes, ticks and grid.
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let (x, y) = (x_min + f * (x_max - x_min), f * y_max);
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}</text>"##,
                MARGIN_LEFT,
                sy(y),
                WIDTH - MARGIN_RIGHT,
                MARGIN_LEFT - 6.0,
                sy(y) + 4.0,
                label(y)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                sx(x),
                HEIGHT - MARGIN_BOTTOM + 18.0,
                label(x)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            MARGIN_LEFT + plot_w / 2.0,
            HEIGHT - 10.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{0:.1}" text-anchor="middle" transform="rotate(-90 16 {0:.1})">{1}</text>"#,
            MARGIN_TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for &(x, y) in &series.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
            let ly = MARGIN_TOP + 16.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{colour}" stroke-width="2"/><text x="{3:.1}" y="{4:.1}">{5}</text>"#,
                MARGIN_LEFT + 10.0,
                ly,
                MARGIN_LEFT + 30.0,
                MARGIN_LEFT + 36.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Charts of a capacity ramp: (file stem, chart).
pub fn capacity_charts(r: &CapacityReport) -> Vec<(&'static str, Chart)> {
    let x = |f: &dyn Fn(&crate::capacity::Step) -> Option<f64>| -> Vec<(f64, f64)> {
        r.steps
            .iter()
            .filter_map(|s| f(s).map(|y| (s.listeners as f64, y)))
            .collect()
    };
    let chart = Chart::against_listeners;
    vec![
        (
            "capacity-loss",
            chart(
                "Loss against listeners",
                "loss %",
                vec![Series {
                    name: "loss %".into(),
                    points: x(&|s| Some(s.loss * 100.0)),
                }],
            ),
        ),
        (
            "capacity-latency",
            chart(
                "p99 one-way latency against listeners",
                "ms",
                vec![Series {
                    name: "p99 latency".into(),
                    points: x(&|s| s.p99_ms),
                }],
            ),
        ),
        (
            "capacity-cpu",
            chart(
                "CPU against listeners",
                "cores",
                vec![
                    Series {
                        name: "server".into(),
                        points: x(&|s| s.server_cpu_cores),
                    },
                    Series {
                        name: "harness".into(),
                        points: x(&|s| s.harness_cpu_cores),
                    },
                ],
            ),
        ),
    ]
}

/// Charts of a run's timeline: (file stem, chart).
pub fn run_charts(r: &Report) -> Vec<(&'static str, Chart)> {
    let x = |f: &dyn Fn(&crate::report::Tick) -> Option<f64>| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .filter_map(|t| f(t).map(|y| (t.t_s, y)))
            .collect()
    };
    let chart = |title: &str, y_label: &str, series: Vec<Series>| Chart {
        title: title.into(),
        x_label: "seconds".into(),
        y_label: y_label.into(),
        series,
    };
    vec![
        (
            "run-packets",
            chart(
                "RTP packets per second",
                "pkt/s",
                vec![
                    Series {
                        name: "received by listeners".into(),
                        points: x(&|t| Some(t.rx_pps)),
                    },
                    Series {
                        name: "forwarded by the server".into(),
                        points: x(&|t| t.server_out_pps),
                    },
                ],
            ),
        ),
        (
            "run-latency",
            chart(
                "p99 one-way latency per second",
                "ms",
                vec![Series {
                    name: "p99".into(),
                    points: x(&|t| t.latency_p99_ms),
                }],
            ),
        ),
        (
            "run-cpu",
            chart(
                "Server CPU",
                "cores",
                vec![Series {
                    name: "server".into(),
                    points: x(&|t| t.server_cpu_cores),
                }],
            ),
        ),
    ]
}

/// A round axis maximum at or above `v`: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(v)
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_escapes_text() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "one".into(),
                    points: vec![(1.0, 2.0), (2.0, 3.0)],
                },
                Series {
                    name: "two".into(),
                    points: vec![],
                },
            ],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt; b"));
        assert_eq!(nice(0.73), 1.0);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(1234.0), 2000.0);
    }
}
