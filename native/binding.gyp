{
  "targets": [
    {
      "target_name": "fscache_native",
      "sources": ["fscache_native.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
