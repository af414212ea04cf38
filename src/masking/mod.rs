//! Masking strategies (shared/method.md M3, M4): cluster masking, random (FLIP) masking, none.
