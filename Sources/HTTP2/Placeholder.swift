public enum HTTP2Placeholder {}
