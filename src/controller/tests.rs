//! Reconcile scenarios against the scripted API server.
