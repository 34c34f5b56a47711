//! TODO(index): module being written.
