def pytest_collection_modifyitems(session, config, items):
    """tests/test_book.py builds the course website from the executed tutorials that
    tests/test_tutorials.py leaves in test-artifacts/tutorials/: it runs last (a stable sort, every
    other test keeps its order). Run alone, it executes what is missing there itself."""
    items.sort(key=lambda item: item.path.name == "test_book.py")
