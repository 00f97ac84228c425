"""Pre-trained assets the project builds itself from what package registries ship (`rmlora assets`)."""
