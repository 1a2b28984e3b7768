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
    m.agent_reports.with_label_values(&["ok"]).inc();
    m.agents_reporting.set(2);
    m.leader.set(1);
    m.health_writes.inc();
    let text = render(&registry);
    for family in [
        "logroute_controller_reconciliations_total",
        "logroute_controller_reconcile_duration_seconds",
        "logroute_controller_routes",
        "logroute_controller_agent_reports_total",
        "logroute_controller_agents_reporting",
        "logroute_controller_leader",
        "logroute_controller_health_status_writes_total",
        "process_cpu_seconds_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} in {text}"
        );
    }
    support::promtool::check_metrics("controller", &text);
}
