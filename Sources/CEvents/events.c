// Empty: CEvents is headers only (SwiftPM needs a source file in a C target).
