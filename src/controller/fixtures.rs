//! Scripted API server for reconcile tests.
