"""Test helpers shared by the suite: the tiny model, a built run folder, the stand-in Hub, the
app server and the browser helpers. Imported as `tests.support.<module>`."""
