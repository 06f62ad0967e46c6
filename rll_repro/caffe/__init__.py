"""Caffe file formats: the schema (caffe.proto -> caffe_pb2), io (every file kind), upgrade (V0/V1 nets,
old solvers) and weights (caffemodel <-> {layer: [numpy arrays]})."""
