"""The Gemini Live side: the only subpackage that imports google.genai (link, wire, events, config)."""
