//! kubetune-webhook (work in progress).
