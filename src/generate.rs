//! The generation loop, shared by both backends.
