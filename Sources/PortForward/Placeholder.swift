public enum PFPlaceholder {}
