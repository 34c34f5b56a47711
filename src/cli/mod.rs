//! TODO(cli): module being written.
