//! TODO(gzip): module being written.
