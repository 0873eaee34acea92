"""Small training-side helpers shared by the model, the criterion and the data pipeline (box maths, ...)."""
