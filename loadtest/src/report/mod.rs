//! Rendering a [`Report`](crate::summary::Report): [`table`] for the terminal (and
//! RESULTS.md), [`html`] for the self-contained page with its SVG charts, JSON through serde.

pub mod html;
pub mod svg;
pub mod table;

/// The short description of one scenario's load, shared by the table and the page.
pub fn load_line(s: &crate::scenario::Scenario) -> String {
    if s.backends.is_empty() {
        return format!(
            "{} req/s open loop, {}, to an external target; {:.1} s measured after {:.1} s warm-up",
            s.rate,
            s.mode.as_str(),
            s.measure.as_secs_f64(),
            s.warmup.as_secs_f64()
        );
    }
    let target = if s.direct {
        "no proxy"
    } else if s.mode == crate::client::Mode::Udp && s.udp_flows == crate::client::UdpFlows::PerRequest {
        "through the tpvs engine, a flow per request"
    } else {
        "through the tpvs engine"
    };
    format!(
        "{} backends, {} req/s open loop, {}, {target}; {:.1} s measured after {:.1} s warm-up",
        s.backends.len(),
        s.rate,
        s.mode.as_str(),
        s.measure.as_secs_f64(),
        s.warmup.as_secs_f64()
    )
}
