// Placeholder until the auth module lands.
public enum TetherAuthPlaceholder {}
