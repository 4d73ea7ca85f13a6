"""`sglang.lang.backend`: SGLang's backend modules, as lmprog's backends."""
