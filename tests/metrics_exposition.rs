//! The controller's /metrics text passes `promtool check metrics`. (The agent's is
//! checked after real traffic, in tests/agent_es.rs.)

mod support;

use logroute::metrics::{ControllerMetrics, render};
use prometheus::Registry;

#[test]
fn controller_exposition_passes_promtool() {
    let registry = Registry::new();
    let m = ControllerMetrics::new(&registry);
    m.reconciliations.with_label_values(&["ready"]).inc();
    m.reconciliations.with_label_values(&["invalid"]).inc();
    m.reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(0.012);
    m.routes.with_label_values(&["true"]).set(3);
    m.routes.with_label_values(&["false"]).set(1);
    let text = render(&registry);
    for family in [
        "logroute_controller_reconciliations_total",
        "logroute_controller_reconcile_duration_seconds",
        "logroute_controller_routes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} in {text}"
        );
    }
    support::promtool::check_metrics("controller", &text);
}
