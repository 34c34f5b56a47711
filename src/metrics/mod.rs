//! TODO(metrics): module being written.
