"""The routing core: `Router` (validate, admit, dispatch, stream) composed of a
`WorkerChooser` (scheduling over live worker views), a `Dispatcher` (the one dispatch path)
and a `RequestMover` (moving streaming requests between workers)."""
