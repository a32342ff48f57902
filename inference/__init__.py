"""The inference layer: everything that turns planned requests into replies, in one package.

* :mod:`.backends`       the ``Backend`` protocol, the registry of backends by name, the shared predict loop;
* :mod:`.hf_generate`    plain transformers ``generate`` (backend ``hf``);
* :mod:`.vllm_engine`    vLLM engine settings (the server's and the offline engine's) and backend ``vllm``;
* :mod:`.server_client`  the HTTP client of a ``medner serve`` endpoint (backend ``server``);
* :mod:`.token_tagger`   token-classification tagging (backend ``tokcls``);
* :mod:`.ray_backend`    Ray Data over servers or in-actor vLLM (backend ``ray``), shards that resume;
* :mod:`.models`         model resolution, loading, merging adapters;
* :mod:`.runrecord`      run records: what an adapter was trained on (types, prompt version, base).

Layers: data -> prompts -> inference -> sft / serve / eval -> cli -> bench.
"""
