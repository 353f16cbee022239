//! Typed Ironic v1 client (issue 3): placeholder until it lands.
