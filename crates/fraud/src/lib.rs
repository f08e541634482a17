//! Fraud scoring (being written).
