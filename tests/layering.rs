//! Architecture rules that must hold for every commit.
