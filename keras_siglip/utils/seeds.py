"""Random draws that resume: a model's `SeedGenerator` state saved with its weights."""

SEED_STATE_KEY = "seed_generator_state"


class SavedSeedMixin:
    """Saves `self.seed_generator`'s state with the model's own variables
    (Keras does not), so a run resumed from a checkpoint draws what an
    uninterrupted one would."""

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        own = {key: store[key] for key in store.keys() if key != SEED_STATE_KEY}
        if SEED_STATE_KEY in store.keys():
            self.seed_generator.state.assign(store[SEED_STATE_KEY])
        super().load_own_variables(own)
